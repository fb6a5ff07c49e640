"""One webhook client process for :mod:`bench.webhook` (``python -m bench.webhook_client``).

Standard library only, so a client starts in a few tens of milliseconds and takes no CPU from
the server under test for importing what it does not use. Protocol on stdin/stdout, one JSON
or word per line: the parent sends the settings, the client opens its keep-alive connection
and answers ``ready``; on ``go`` it sends deliveries (warm-up first, then the timed window,
bounded in time and in count) and prints its results.

The event, body and signature builders are shared with the in-process baseline, so both
sides handle byte-identical deliveries.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import sys
import time
from typing import Any

PHONE_PREFIX = "+4479111"  # + 5 digits: 07911 1xxxxx, all valid GB mobile numbers
TIMESTAMP = "2026-11-01T10:00:00Z"


def event(variant: str, worker: int, i: int, j: int, phones: int) -> dict[str, Any]:
    n = ((worker << 24) + i * 64 + j) * 2654435761
    return {
        "consent_id": f"wh-{variant}-{worker}-{i:07d}-{j:02d}",
        "phone": f"{PHONE_PREFIX}{n % phones:05d}",
        "consent_type": "marketing_rcs",
        "status": "granted",
        "timestamp": TIMESTAMP,
        "cmp_version": "bench",
    }


def events(variant: str, per: int, worker: int, i: int, phones: int) -> list[dict[str, Any]]:
    return [event(variant, worker, i, j, phones) for j in range(per)]


def body(variant: str, per: int, worker: int, i: int, phones: int) -> bytes:
    """One delivery: a single event object, or ``{"events": [...]}`` when ``per`` > 1."""
    evs = events(variant, per, worker, i, phones)
    doc: Any = evs[0] if per == 1 else {"events": evs}
    return json.dumps(doc, separators=(",", ":")).encode()


def msg_id(variant: str, worker: int, i: int) -> str:
    return f"msg_{variant}_{worker}_{i}"


def sign(secret: bytes, webhook_id: str, ts: str, payload: bytes) -> str:
    """Standard Webhooks ``webhook-signature``: v1, base64 HMAC-SHA256 of id.ts.body."""
    mac = hmac.new(secret, f"{webhook_id}.{ts}.".encode() + payload, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def headers(secret: bytes, webhook_id: str, payload: bytes) -> dict[str, str]:
    ts = str(int(time.time()))
    return {
        "Content-Type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": ts,
        "webhook-signature": sign(secret, webhook_id, ts, payload),
    }


def main() -> None:
    cfg = json.loads(sys.stdin.readline())
    port, path, variant = int(cfg["port"]), cfg["path"], cfg["variant"]
    per, phones, worker = int(cfg["per"]), int(cfg["phones"]), int(cfg["worker"])
    secret = base64.b64decode(cfg["secret"])
    latencies: list[float] = []
    errors: dict[str, int] = {}
    failed: list[int] = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/healthz")  # open the keep-alive connection before the clock starts
    conn.getresponse().read()

    def post(i: int) -> tuple[int | str, float]:
        nonlocal conn
        payload = body(variant, per, worker, i, phones)
        hdrs = headers(secret, msg_id(variant, worker, i), payload)
        t0 = time.monotonic()  # body and signature are built before the clock starts
        try:
            conn.request("POST", path, body=payload, headers=hdrs)
            response = conn.getresponse()
            response.read()
            return response.status, time.monotonic() - t0
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            return type(exc).__name__, time.monotonic() - t0

    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    clock = time.monotonic
    t_go = clock()
    warm_until = t_go + float(cfg["warmup"])
    stop_at = warm_until + float(cfg["duration"])
    cap = int(cfg["max_deliveries"])
    i = 0
    while clock() < warm_until and i < cap:
        post(i)
        i += 1
    n_warm = i
    cpu0, t_start = time.process_time(), clock()
    t_end = t_start
    while i < n_warm + cap:
        status, elapsed = post(i)
        t_end = clock()
        if status == 201:
            latencies.append(elapsed)
        else:
            errors[str(status)] = errors.get(str(status), 0) + 1
            failed.append(i)
        i += 1
        if t_end >= stop_at:
            break
    conn.close()
    result = {
        "worker": worker,
        "n_warm": n_warm,
        "n_timed": i - n_warm,
        "failed": failed,
        "latencies": latencies,
        "errors": errors,
        "t_start": t_start,
        "t_end": t_end,
        "cpu": time.process_time() - cpu0,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
