"""Figure 12: outbox relay throughput, deliveries/s to a local receiver.

N ``consent.changed`` outbox events (two consecutive events per subject, so the per-subject
order rule is in play) are written untimed through ``core.outbox.record`` (the writer the
ingest path uses, in transactions of 1,000) for one endpoint; then the relay
(``Relay.run``, as the worker runs it, with the ``HttpSender`` the worker uses and the default
settings: claim batches of 256, 32 requests in flight; the next batch is claimed while the
current one is sent) runs until nothing is pending: claim with a lease, sign each request at
send time (Standard Webhooks HMAC), POST, record the outcomes. Timed: from the start to the
last outcome recorded. The receiver is
``bench/receiver.py`` in its own process (uvloop, keep-alive, answers 204 at once); the run
checks that it counted exactly N requests and that every delivery is ``delivered``.

Baseline, same run, same receiver, same client: N bare signed POSTs of the same bodies through
the same ``HttpSender`` (same concurrency, same batches), each signed at send time, with no
database at all: what the relay would reach if the queue cost nothing.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from datetime import UTC, datetime

from sqlalchemy import func, select

from bench.backends import Backend
from bench.common import REPO, Figure, free_port, process_cpu_seconds
from bench.config import Sizes
from consentgate.bootstrap import App
from consentgate.domain.timeutil import format_rfc3339, to_micros
from consentgate.outbox import events, rules
from consentgate.outbox.relay import Relay
from consentgate.outbox.sender import HttpSender, Request
from consentgate.storage.engine import read_tx, write_tx
from consentgate.storage.tables import crm_endpoints, outbox_deliveries

TENANT = "relay"
FLOOR = 1_000.0  # deliveries/s on 2 cores


def _start_receiver(port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.receiver", str(port)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            _received(port)
            return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("the bench receiver did not start")


def _received(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/count", timeout=5) as r:
        return int(json.load(r)["received"])


def _fill(core: App, n: int, per_subject: int, tag: str) -> float:
    """Write ``n`` outbox events (one delivery each); return the seconds it took."""
    started = time.perf_counter()
    written = 0
    while written < n:
        chunk = min(1_000, n - written)
        batch = []
        ref = hashed = ""
        for i in range(written, written + chunk):
            if i % per_subject == 0:
                ref, hashed = str(uuid.uuid4()), secrets.token_hex(32)
            batch.append(
                events.consent_changed(
                    subject_ref=ref,
                    hashed_id=hashed,
                    consent_type="marketing_rcs",
                    status="granted" if i % 2 == 0 else "withdrawn",
                    timestamp="2026-06-01T12:00:00Z",
                    cmp_version="2.2",
                    consent_id=f"{tag}-{i:08d}",
                    ledger_seq=i,
                    source="web",
                    state_changed=True,
                )
            )
        with write_tx(core.engine) as conn:
            core.outbox.record(conn, TENANT, batch, to_micros(core.clock.now()))
        written += chunk
    return time.perf_counter() - started


def _drain(relay: Relay, core: App, port: int, expect: int) -> float:
    """Run the relay as the worker does (``Relay.run``: the next batch claimed while the
    current one is sent) until the receiver counted ``expect`` more requests and nothing is
    pending; return the seconds from start to the last outcome recorded."""
    before = _received(port)
    stop = threading.Event()
    worker = threading.Thread(target=relay.run, args=(stop, 0.005), daemon=True)
    started = time.perf_counter()
    worker.start()
    try:
        while _received(port) - before < expect:
            time.sleep(0.02)
        while _pending(core):
            time.sleep(0.005)
        return time.perf_counter() - started
    finally:
        stop.set()
        worker.join(timeout=60)


def _pending(core: App) -> int:
    with read_tx(core.engine) as conn:
        return int(
            conn.execute(
                select(func.count()).where(outbox_deliveries.c.status == "pending")
            ).scalar_one()
        )


def _delivered(core: App) -> int:
    with read_tx(core.engine) as conn:
        return int(
            conn.execute(
                select(func.count()).where(
                    outbox_deliveries.c.tenant_id == TENANT,
                    outbox_deliveries.c.status == "delivered",
                )
            ).scalar_one()
        )


def _bare(sender: HttpSender, url: str, secret: bytes, n: int, batch: int) -> float:
    """``n`` bare signed POSTs in batches of ``batch``; returns the seconds they took."""
    created = format_rfc3339(datetime.now(UTC))
    bodies = [
        events.render(
            events.consent_changed(
                subject_ref=str(uuid.uuid4()),
                hashed_id=secrets.token_hex(32),
                consent_type="marketing_rcs",
                status="granted",
                timestamp="2026-06-01T12:00:00Z",
                cmp_version="2.2",
                consent_id=f"bare-{i:08d}",
                ledger_seq=i,
                source="web",
                state_changed=True,
            ),
            created,
        ).encode()
        for i in range(n)
    ]

    def request(i: int) -> Request:
        body, webhook_id = bodies[i], f"msg_bare{i}"
        return Request(
            url,
            body,
            lambda: rules.signed_headers(secret, webhook_id, int(time.time()), body),
        )

    requests = [request(i) for i in range(n)]
    started = time.perf_counter()
    for start in range(0, n, batch):
        results = sender.send_all(requests[start : start + batch], time.monotonic() + 600)
        if not all(r.ok for r in results):
            raise RuntimeError("a bare POST to the bench receiver failed")
    return time.perf_counter() - started


def run(backend: Backend, core: App, sizes: Sizes) -> list[Figure]:
    port = free_port()
    receiver = _start_receiver(port)
    settings = core.settings.webhooks
    sender = HttpSender(settings.concurrency, settings.timeout_seconds)
    try:
        core.tenants.create(TENANT, "GB")
        url = f"http://127.0.0.1:{port}/hooks"
        endpoint = core.endpoints.create(TENANT, url, ["consent.changed"])
        endpoint_id = endpoint["endpoint_id"]
        secret = core.endpoints.secret(TENANT, endpoint_id, _wrapped(core, endpoint_id))
        relay = Relay(core.engine, core.endpoints, core.clock, settings, sender)
        per_subject = sizes.outbox_events_per_subject

        # Warm-up (excluded): both paths, so connections, caches and plans are warm.
        _fill(core, sizes.outbox_warmup, per_subject, "warm")
        _drain(relay, core, port, sizes.outbox_warmup)
        _bare(sender, url, secret, sizes.outbox_warmup, settings.batch)

        n = sizes.outbox_deliveries
        fill_s = _fill(core, n, per_subject, "timed")
        before = _received(port)
        rx_cpu0, cpu0 = process_cpu_seconds(receiver.pid), time.process_time()
        relay_s = _drain(relay, core, port, n)
        relay_cpu = time.process_time() - cpu0
        rx_cpu = process_cpu_seconds(receiver.pid) - rx_cpu0
        got = _received(port) - before
        delivered = _delivered(core) - sizes.outbox_warmup
        if got != n or delivered != n:
            raise RuntimeError(f"relayed {delivered} and the receiver counted {got}, not {n}")

        before = _received(port)
        base_cpu0, base_rx0 = time.process_time(), process_cpu_seconds(receiver.pid)
        bare_s = _bare(sender, url, secret, n, settings.batch)
        base_cpu = time.process_time() - base_cpu0
        base_rx = process_cpu_seconds(receiver.pid) - base_rx0
        if _received(port) - before != n:
            raise RuntimeError("the receiver did not count every bare POST")
    finally:
        sender.close()
        receiver.terminate()
        receiver.wait(timeout=10)
    rate, base = n / relay_s, n / bare_s
    return [
        Figure(
            backend.name,
            "outbox_relay",
            "outbox relay deliveries/s to a local receiver",
            "/s",
            value=rate,
            baseline_title="bare signed POSTs/s, same client and receiver, no database",
            baseline=base,
            floor=FLOOR,
            floor_kind="min",
            details={
                "deliveries": n,
                "events_per_subject": per_subject,
                "relay_seconds": relay_s,
                "claim_batch": settings.batch,
                "concurrency": settings.concurrency,
                "relay_process_cpu_cores_busy": relay_cpu / relay_s,
                "receiver_cpu_cores_busy": rx_cpu / relay_s,
                "baseline_seconds": bare_s,
                "baseline_client_cpu_cores_busy": base_cpu / bare_s,
                "baseline_receiver_cpu_cores_busy": base_rx / bare_s,
                "fill_seconds_untimed": fill_s,
                "receiver_counted": got,
                "warmup_deliveries": sizes.outbox_warmup,
            },
        )
    ]


def _wrapped(core: App, endpoint_id: str) -> bytes:
    with read_tx(core.engine) as conn:
        return bytes(
            conn.execute(
                select(crm_endpoints.c.secret_wrapped).where(crm_endpoints.c.id == endpoint_id)
            ).scalar_one()
        )
