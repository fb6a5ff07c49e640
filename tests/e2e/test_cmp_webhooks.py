"""Signed CMP webhooks over real HTTP, signed by the official ``standardwebhooks`` package."""

from __future__ import annotations

import json
import os
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from standardwebhooks import Webhook

from tests.e2e.conftest import Server, _start


def _deliver(
    server: Server,
    tenant: str,
    secret: str,
    payload: Any,
    msg_id: str,
    *,
    adapter: str = "generic",
    at: datetime | None = None,
    tamper: bool = False,
) -> httpx.Response:
    body = payload if isinstance(payload, str) else json.dumps(payload)
    when = at or datetime.now(UTC)
    signature = Webhook(secret).sign(msg_id, when, body)
    sent = body + (" " if tamper else "")
    return httpx.post(
        f"{server.url}/v1/tenants/{tenant}/cmp/{adapter}/events",
        content=sent.encode(),
        headers={
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(when.timestamp())),
            "webhook-signature": signature,
            "content-type": "application/json",
        },
        timeout=10,
    )


def _event(consent_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "consent_id": consent_id,
        "phone": "07911 123456",
        "consent_type": "marketing_rcs",
        "status": "granted",
        "timestamp": "2026-11-01T10:00:00Z",
        "cmp_version": "cmp-7.1",
        **extra,
    }


def _size(server: Server, key: str) -> int:
    with server.client(key) as http:
        r = http.get("/v1/ledger/checkpoint")
    return int(r.text.split("\n")[1]) if r.status_code == 200 else 0


def test_signed_webhooks_accepted_forged_stale_replayed_handled(server: Server) -> None:
    acme = server.create_tenant("acme")
    secret, key = acme["webhook_secret"], acme["api_key"]
    first = _deliver(server, "acme", secret, _event("w-1"), "msg_1")
    assert first.status_code == 201, first.text
    again = _deliver(server, "acme", secret, _event("w-1"), "msg_1")
    assert again.status_code == 201 and again.json() == first.json()
    assert again.headers["webhook-replayed"] == "true"
    # Same webhook-id, different (validly signed) body: still the original answer, nothing new.
    other = _deliver(server, "acme", secret, _event("w-other"), "msg_1")
    assert other.json() == first.json()
    assert _size(server, key) == 1

    forged = _deliver(server, "acme", secret, _event("w-2"), "msg_2", tamper=True)
    wrong_secret = _deliver(server, "acme", "whsec_" + "A" * 43 + "=", _event("w-2"), "msg_3")
    stale = _deliver(
        server, "acme", secret, _event("w-2"), "msg_4", at=datetime.now(UTC) - timedelta(minutes=6)
    )
    future = _deliver(
        server, "acme", secret, _event("w-2"), "msg_5", at=datetime.now(UTC) + timedelta(minutes=6)
    )
    unsigned = httpx.post(
        f"{server.url}/v1/tenants/acme/cmp/generic/events", json=_event("w-2"), timeout=10
    )
    for r in (forged, wrong_secret, stale, future, unsigned):
        assert r.status_code == 401, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
    assert _size(server, key) == 1


def test_other_tenants_secret_and_unknown_tenant(server: Server) -> None:
    acme = server.create_tenant("acme")
    beta = server.create_tenant("beta")
    assert _deliver(server, "acme", beta["webhook_secret"], _event("x"), "m1").status_code == 401
    assert _deliver(server, "nobody", beta["webhook_secret"], _event("x"), "m2").status_code == 401
    assert _size(server, acme["api_key"]) == 0


def test_generic_payload_errors_record_nothing(server: Server) -> None:
    acme = server.create_tenant("acme")
    secret = acme["webhook_secret"]
    bad = _deliver(server, "acme", secret, _event("g-1", phone="+44 12"), "m1")
    assert bad.status_code == 422 and bad.json()["field"] == "phone"
    assert _deliver(server, "acme", secret, "{not json", "m2").status_code == 422
    unknown = _deliver(server, "acme", secret, _event("g-1"), "m3", adapter="nope")
    assert unknown.status_code == 404
    batch = {"events": [_event("g-2"), _event("g-3", consent_type="analytics")]}
    ok = _deliver(server, "acme", secret, batch, "m4")
    assert ok.status_code == 201 and len(ok.json()["events"]) == 2
    hashed = ok.json()["events"][0]["hashed_id"]
    both = _deliver(server, "acme", secret, _event("g-4", hashed_phone=hashed), "m5")
    assert both.status_code == 422 and both.json()["field"] == "phone"
    payload = {k: v for k, v in _event("g-4").items() if k != "phone"}
    by_hash = _deliver(server, "acme", secret, {**payload, "hashed_phone": hashed}, "m6")
    assert by_hash.status_code == 201 and by_hash.json()["events"][0]["hashed_id"] == hashed


def test_two_worker_processes_share_the_port_and_the_ledger(
    env: dict[str, str], tmp_path: Path
) -> None:
    """``serve --workers 2``: deliveries on separate connections land in either process;
    each is recorded once, a replay answered by either process gets the original answer."""
    log = tmp_path / "server.log"
    server = _start({**os.environ, **env}, log, "--workers", "2")
    try:
        deadline = time.monotonic() + 60  # the second worker may still be starting
        while len(_started(log)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(_started(log)) == 2
        acme = server.create_tenant("acme")
        secret = acme["webhook_secret"]
        first = {}
        for i in range(16):  # a new connection each: the kernel hands them to either worker
            r = _deliver(server, "acme", secret, _event(f"wk-{i}"), f"msg_wk_{i}")
            assert r.status_code == 201, r.text
            first[i] = r.json()
        for i in range(0, 16, 3):
            again = _deliver(server, "acme", secret, _event(f"wk-{i}"), f"msg_wk_{i}")
            assert again.status_code == 201 and again.json() == first[i]
            assert again.headers["webhook-replayed"] == "true"
        assert sorted(a["events"][0]["seq"] for a in first.values()) == list(range(16))
        assert _size(server, acme["api_key"]) == 16
        for _ in range(4):  # each scrape is answered by one worker: all count every event
            scrape = httpx.get(f"{server.url}/metrics", timeout=10).text
            recorded = [
                sample.value
                for family in text_string_to_metric_families(scrape)
                for sample in family.samples
                if sample.name == "consentgate_consent_events_total"
                and sample.labels.get("tenant") == "acme"
            ]
            assert recorded == [16.0]
        lines = log.read_text()
        # Only the route-template access log: uvicorn's prints concrete paths.
        assert "uvicorn.access" not in lines and "/cmp/generic/events" not in lines
    finally:
        server.process.terminate()
        server.process.wait(timeout=30)


def _started(log: Path) -> set[str]:
    """The pids of the worker processes that have logged their start."""
    return set(re.findall(r"Started server process \[(\d+)\]", log.read_text()))
