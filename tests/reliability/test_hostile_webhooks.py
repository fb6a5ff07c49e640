"""Hostile bodies on the endpoints the outside world posts to without an API key: a CMP's
signed webhook, the providers' callbacks and the sandbox carrier's inbound route.

Each body (random bytes, bad UTF-8, JSON nested 10^5 deep, numbers past every limit,
repeated names, the wrong content type) must get a clear RFC 9457 4xx, record nothing (a
digest of every table before and after) and leave the service up (a health check after each).
Signed endpoints get the hostile bytes correctly signed, so the parser behind the signature
check is what is tested, not just the check.

Bodies over the limit must be refused early with 413: with a Content-Length the answer comes
before any of the body is sent; chunked, without a length, it comes once the limit is passed,
long before the client has sent its 10 MB (over a raw socket, so the test sees how much it
had sent when the answer arrived).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import select
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from consentgate.delivery.providers import rbm
from tests.reliability.live_api import LiveApi, changed_tables
from tests.reliability.procs import report

TEN_MB = 10 * 1024 * 1024
CHUNKED_TOTAL = 16 * 1024 * 1024  # what a chunked sender means to send (no length says so)
EVENT = {
    "consent_id": "hostile-1",
    "phone": "+447911200101",
    "consent_type": "marketing_rcs",
    "status": "granted",
    "timestamp": "2026-01-05T10:00:00Z",
    "cmp_version": "hostile-1.0",
}
_rng = random.Random(20261127)

#: name → (body, content type). Every one of them is refused by every target.
BODIES: dict[str, tuple[bytes, str]] = {
    "random bytes": (_rng.randbytes(64 * 1024), "application/json"),
    "random bytes, no type": (_rng.randbytes(4096), ""),
    "bad UTF-8": (b'{"consent_id": "\xff\xfe\xc3(", "status": "granted"}', "application/json"),
    "deep array": (b"[" * 100_000 + b"]" * 100_000, "application/json"),
    "deep object": (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "application/json"),
    "huge integer": (b'{"consent_id": ' + b"9" * 5000 + b"}", "application/json"),
    "huge float": (b'{"consent_id": "x", "n": 1e999999}', "application/json"),
    "NaN": (b'{"consent_id": NaN}', "application/json"),
    "NUL": (json.dumps({**EVENT, "consent_id": "a\u0000"}).encode(), "application/json"),
    "half a surrogate pair": (
        json.dumps({**EVENT, "consent_id": "x"}).replace('"x"', '"\\ud800"').encode(),
        "application/json",
    ),
    "repeated names": (
        json.dumps(EVENT)[:-1].encode() + b', "status": "withdrawn"}',
        "application/json",
    ),
    "empty": (b"", "application/json"),
    "JSON, typed as a form": (json.dumps(EVENT).encode(), "application/x-www-form-urlencoded"),
    "JSON, typed as text": (json.dumps(EVENT).encode(), "text/plain"),
    "XML": (b"<?xml version='1.0'?><event><status>granted</status></event>", "application/xml"),
}


@dataclass
class Target:
    """An endpoint and how a sender signs for it: ``request(body, type)`` → (path, headers,
    content)."""

    name: str
    request: Callable[[bytes, str], tuple[str, dict[str, str], bytes]]


def _standard_webhook(secret: str, msg_id: str, body: bytes) -> dict[str, str]:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    stamp = str(int(time.time()))
    mac = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": stamp,
        "webhook-signature": "v1," + base64.b64encode(mac).decode(),
    }


def _targets(live: LiveApi, tenant: dict[str, str]) -> list[Target]:
    def typed(kind: str) -> dict[str, str]:
        return {"content-type": kind} if kind else {}

    def cmp(body: bytes, kind: str) -> tuple[str, dict[str, str], bytes]:
        signed = _standard_webhook(tenant["webhook_secret"], f"msg_{uuid.uuid4().hex}", body)
        return f"/v1/tenants/{tenant['tenant']}/cmp/generic/events", signed | typed(kind), body

    def rbm_signed(body: bytes, kind: str) -> tuple[str, dict[str, str], bytes]:
        # The hostile bytes are the signed event inside RBM's Pub/Sub envelope.
        outer = {"message": {"data": base64.b64encode(body).decode(), "messageId": "1"}}
        headers = {rbm.SIGNATURE_HEADER: rbm.sign(live.rbm_token, body)} | typed(kind)
        return "/v1/providers/rbm/callbacks", headers, json.dumps(outer).encode()

    def rbm_outer(body: bytes, kind: str) -> tuple[str, dict[str, str], bytes]:
        # The hostile bytes as the whole (unsigned) body: RBM's set-up handshake reads those.
        return "/v1/providers/rbm/callbacks", typed(kind), body

    def sms(body: bytes, kind: str) -> tuple[str, dict[str, str], bytes]:
        return "/v1/providers/sms/callbacks", typed(kind), body

    def inbound(body: bytes, kind: str) -> tuple[str, dict[str, str], bytes]:
        return "/sandbox/inbound", typed(kind), body

    return [
        Target("CMP webhook (signed)", cmp),
        Target("RBM callback (signed event)", rbm_signed),
        Target("RBM callback (whole body)", rbm_outer),
        Target("SMS callback", sms),
        Target("sandbox inbound", inbound),
    ]


def _is_problem(r: httpx.Response) -> bool:
    if not r.headers.get("content-type", "").startswith("application/problem+json"):
        return False
    body = r.json()
    return body.get("status") == r.status_code and bool(body.get("detail"))


def test_hostile_bodies_get_a_4xx_problem_and_change_nothing(live_api: LiveApi) -> None:
    tenant = live_api.tenant("hostile")
    targets = _targets(live_api, tenant)
    failures: list[str] = []
    calls = 0
    before = live_api.digest()
    with httpx.Client(base_url=live_api.url, timeout=30) as http:
        for target in targets:
            for name, (body, kind) in BODIES.items():
                path, headers, content = target.request(body, kind)
                r = http.post(path, content=content, headers=headers)
                calls += 1
                where = f"{target.name} ← {name}"
                if not 400 <= r.status_code < 500:
                    failures.append(f"{where}: {r.status_code} {r.text[:200]}")
                elif not _is_problem(r):
                    failures.append(f"{where}: {r.status_code} is not a problem: {r.text[:200]}")
                if not live_api.healthy():
                    failures.append(f"{where}: the service is down")
                    break
                after = live_api.digest()
                if changed := changed_tables(before, after):
                    failures.append(f"{where}: recorded something in {changed}")
                before = after
    line = report(
        f"hostile bodies on {live_api.backend}: {calls} requests ({len(targets)} endpoints × "
        f"{len(BODIES)} bodies), {len(failures)} not a clean 4xx problem with nothing recorded"
    )
    assert not failures, "\n".join([line, *failures])
    # The same endpoint still takes a good delivery: the refusals broke nothing.
    good = json.dumps(EVENT).encode()
    path, headers, content = targets[0].request(good, "application/json")
    accepted = httpx.post(f"{live_api.url}{path}", content=content, headers=headers, timeout=10)
    assert accepted.status_code == 201, accepted.text


# -- bodies over the limit ---------------------------------------------------------------


def _answer(sock: socket.socket, timeout: float = 30) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next((int(v) for k, v in _headers(head).items() if k == "content-length"), len(rest))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return head + b"\r\n\r\n" + rest


def _headers(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def _open(url: str, path: str, headers: dict[str, str]) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.socket()
    # A small send buffer: what the test counts as sent is close to what the server could read.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    sock.settimeout(30)
    sock.connect((parts.hostname, parts.port or 80))
    head = f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall((head + "\r\n").encode("latin-1"))
    return sock


def _send_until_answered(sock: socket.socket, total: int) -> tuple[int, bytes]:
    """Send up to ``total`` body bytes in 64 KiB chunks, stopping as soon as an answer
    arrives; (body bytes handed to the kernel by then, the answer)."""
    piece = b"x" * 65536
    sent, pending = 0, b""
    sock.setblocking(False)
    try:
        while sent < total or pending:
            readable, writable, _ = select.select([sock], [sock], [], 5)
            if readable:
                break
            if not writable:
                continue  # the server stopped reading: its answer is due
            if not pending:
                pending = b"%x\r\n" % len(piece) + piece + b"\r\n"
                sent += len(piece)
            try:
                pending = pending[sock.send(pending) :]
            except BlockingIOError:
                continue
            except ConnectionError:
                break
    finally:
        sock.setblocking(True)
    return sent, _answer(sock)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_ten_megabytes_are_refused_early_with_413(live_api: LiveApi, framing: str) -> None:
    tenant = live_api.tenant("huge")
    targets = {t.name: t for t in _targets(live_api, tenant)}
    before = live_api.digest()
    seen: list[str] = []
    for name in ("CMP webhook (signed)", "RBM callback (whole body)", "sandbox inbound"):
        # Headers only: a signature cannot be made over a body never sent; the limit comes
        # first anyway.
        path, headers, _ = targets[name].request(b"", "application/json")
        if framing == "content-length":
            headers["content-length"] = str(TEN_MB)
            sock = _open(live_api.url, path, headers)
            sent, answer = 0, _answer(sock)  # not one byte of the body was sent
        else:
            headers["transfer-encoding"] = "chunked"
            sock = _open(live_api.url, path, headers)
            sent, answer = _send_until_answered(sock, CHUNKED_TOTAL)
        sock.close()
        status = _status(answer)
        body = json.loads(answer.partition(b"\r\n\r\n")[2] or b"{}")
        assert status == 413, f"{name}: {answer[:300]!r}"
        assert body["type"] == "/problems/payload-too-large", body
        assert sent < CHUNKED_TOTAL, f"{name}: answered only once the whole body was sent"
        assert live_api.healthy(), f"{name}: the service is down"
        seen.append(f"{name} after {sent // 1024} KiB")
    assert not changed_tables(before, live_api.digest())
    report(f"10 MB bodies ({framing}) on {live_api.backend}: 413 early for " + "; ".join(seen))


def test_ambiguous_json_is_refused_by_the_app_and_the_hot_path_alike(live_api: LiveApi) -> None:
    """POST /v1/consent-events is answered by the hot path once a key is cached and by the
    app before: both read bodies as strict JSON (a repeated name is not guessed at)."""
    tenant = live_api.tenant("strict")
    bodies = {name: BODIES[name][0] for name in ("repeated names", "huge integer", "NaN")}
    before = live_api.digest()
    with live_api.client(tenant["api_key"]) as http:
        for attempt in ("unseen key (the app)", "cached key (the hot path)"):
            for name, body in bodies.items():
                r = http.post(
                    "/v1/consent-events",
                    content=body,
                    headers={"content-type": "application/json"},
                )
                assert r.status_code == 400, f"{attempt}, {name}: {r.status_code} {r.text}"
                assert r.json()["type"] == "/problems/malformed-request", r.text
    assert not changed_tables(before, live_api.digest())


def test_nul_characters_are_refused_at_the_door(live_api: LiveApi) -> None:
    """A NUL in a body string, a path or a query is a 400 before it reaches the store
    (PostgreSQL's text cannot hold one: it was a 500 from inside a query)."""
    tenant = live_api.tenant("nul")
    event = {**EVENT, "consent_id": "nul\u0000id"}
    requests_: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/v1/consent-events", {"json": event}),
        ("POST", "/v1/templates", {"json": {"name": "a\u0000", "text": "b"}}),
        ("PUT", "/v1/purposes/nul_test", {"json": {"description": "x\u0000"}}),
        ("GET", "/v1/campaigns/a%00b", {}),
        ("GET", "/v1/messages/a%00b", {}),
        ("DELETE", "/v1/devices/a%00b", {}),
        ("GET", "/v1/analytics/engagement", {"params": {"campaign_id": "a\u0000"}}),
    ]
    before = live_api.digest()
    for method, path, kwargs in requests_:
        # A client each: should one end in a 500, its connection would be closed under it.
        with live_api.client(tenant["api_key"]) as http:
            r = http.request(method, path, **kwargs)
        assert r.status_code == 400, f"{method} {path}: {r.status_code} {r.text[:200]}"
        assert r.json()["type"] == "/problems/malformed-request", r.text
    assert not changed_tables(before, live_api.digest())
