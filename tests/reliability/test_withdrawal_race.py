"""Withdrawals while three dispatch workers send a campaign (PostgreSQL, SQLite): no message to a
withdrawn subject reaches the carrier after the withdrawal was acknowledged, and (PostgreSQL)
every withdrawal reaches every worker's consent-cache listener (LISTEN/NOTIFY), how fast is
reported.

Each withdrawal names a recipient the carrier has not received yet, so some of them race a
batch that is being sent. The carrier stamps what it receives (``received_at``); the client
takes the acknowledgement instant when the 2xx answer is in its hands, on the same host's
clock. A message received before that instant was sent before the withdrawal was
acknowledged and is allowed; one after it is a breach.

The reach time is each worker's own measurement (``--metrics-port``): the histogram
``consentgate_consent_invalidation_reach_seconds`` of arrival minus the writer's clock just
before its commit, read before and after the withdrawals; its count must grow by exactly the
number of withdrawals in every worker. The time is reported (and, under ``make
reliability``, written to ``bench/results.json`` against its 100 ms floor), not asserted:
a test asserts no speed.
"""

from __future__ import annotations

import random
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import pg
from tests.reliability import benchfig
from tests.reliability.procs import (
    PURPOSE,
    ReliabilityCluster,
    Stack,
    mixed_audience,
    report,
    size,
    stack,
    wait_for,
)

WORKERS = 3
REACH = "consentgate_consent_invalidation_reach_seconds"
FLOOR_MS = 100.0


def _reach(port: int) -> tuple[float, float, dict[float, float]]:
    """(count, sum, cumulative bucket counts by upper bound) of one worker's histogram."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    count = total = 0.0
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != REACH:
            continue
        for s in family.samples:
            if s.name == REACH + "_count":
                count = s.value
            elif s.name == REACH + "_sum":
                total = s.value
            elif s.name == REACH + "_bucket":
                buckets[float(s.labels["le"])] = s.value
    return count, total, buckets


def _upper_bound(before: dict[float, float], after: dict[float, float], n: float) -> float:
    """The smallest bucket bound under which all ``n`` new observations fall."""
    for le in sorted(after):
        if after[le] - before.get(le, 0.0) >= n:
            return le
    return float("inf")


def _received_us(message: dict[str, Any]) -> float:
    return datetime.fromisoformat(message["received_at"].replace("Z", "+00:00")).timestamp()


@pytest.mark.parametrize("backend", ["pg"])
def test_no_message_after_a_withdrawal_is_acknowledged(
    backend: str, tmp_path: Path, rel_cluster: ReliabilityCluster
) -> None:
    granted, withdrawals = size(300, 3000), size(12, 100)
    settings = {
        "CONSENTGATE_DISPATCH_BATCH": "25",
        "CONSENTGATE_PROVIDER_RATE_RBM": str(size(40, 100)),
    }
    with stack(backend, tmp_path, rel_cluster, **settings) as dep:
        dep.create_tenant()
        dep.start_serve("--no-workers")
        ports = [pg.free_port() for _ in range(WORKERS)]
        for i, port in enumerate(ports):
            dep.start_worker(f"worker-{i}", "--metrics-port", str(port))
        wait_for("the workers' metrics", lambda: all(_up(p) for p in ports), 60)
        with dep.api() as http:
            aud = mixed_audience(dep, http, granted, size(20, 200))
            cid = dep.campaign(http, aud.everyone)
            before = [_reach(p) for p in ports]
            assert http.post(f"/v1/campaigns/{cid}/send").status_code == 200
            wait_for("the first deliveries", lambda: len(dep.received()) >= granted // 10, 60)
            acks, latencies = _withdraw(dep, http, aud.granted, withdrawals)
            withdrawals = len(acks)
            time.sleep(0.5)  # notifications in flight land (they are measured, not waited on)
            after = [_reach(p) for p in ports]
            status = dep.wait_done(http, cid, size(120, 600))
        received = dep.received()
    late = [m for m in received if m["to"] in acks and _received_us(m) > acks[m["to"]]]
    early = [m for m in received if m["to"] in acks and _received_us(m) <= acks[m["to"]]]
    heard = [a[0] - b[0] for a, b in zip(after, before, strict=True)]
    means = [
        (a[1] - b[1]) / max(1.0, a[0] - b[0]) * 1000 for a, b in zip(after, before, strict=True)
    ]
    bounds = [
        _upper_bound(b[2], a[2], a[0] - b[0]) * 1000 for a, b in zip(after, before, strict=True)
    ]
    within = [
        (a[2].get(FLOOR_MS / 1000, 0.0) - b[2].get(FLOOR_MS / 1000, 0.0)) / max(1.0, a[0] - b[0])
        for a, b in zip(after, before, strict=True)
    ]
    reach_ms = max(means)
    line = report(
        f"{withdrawals} withdrawals during a {len(aud.everyone)}-recipient campaign on "
        f"{WORKERS} workers ({backend}): {len(early)} of their messages received before the "
        f"acknowledgement, {len(late)} after it; every worker heard {heard} of "
        f"{withdrawals}; reach per worker mean "
        f"{', '.join(f'{m:.1f}' for m in means)} ms, all under "
        f"{', '.join(f'{b:g}' for b in bounds)} ms, "
        f"{', '.join(f'{w:.0%}' for w in within)} within the {FLOOR_MS:g} ms floor; "
        f"acknowledgement took median {sorted(latencies)[len(latencies) // 2] * 1000:.0f} ms, max "
        f"{max(latencies) * 1000:.0f} ms; campaign sent {status['sent']}, skipped "
        f"{status['skipped']} of {len(aud.everyone)}"
    )
    benchfig.record_withdrawal_reach(reach_ms, means, bounds, within, withdrawals, line)
    assert not late, line
    assert heard == [withdrawals] * WORKERS, line
    # The reach time itself is a figure (bench/results.json, floor 100 ms), not asserted on.
    assert status["sent"] + len(late) <= len(aud.granted) - withdrawals + len(early), line


def test_no_message_after_a_withdrawal_is_acknowledged_sqlite(tmp_path: Path) -> None:
    """The same race on SQLite (three worker processes on one database file): the fences
    are file locks there; no NOTIFY, so no reach to measure (the shared generation counters
    make a change visible to this host's processes before it is acknowledged)."""
    granted, withdrawals = size(300, 2000), size(12, 60)
    settings = {
        "CONSENTGATE_DISPATCH_BATCH": "25",
        "CONSENTGATE_PROVIDER_RATE_RBM": str(size(40, 100)),
    }
    with stack("sqlite", tmp_path, None, **settings) as dep:
        dep.create_tenant()
        dep.start_serve("--no-workers")
        for i in range(WORKERS):
            dep.start_worker(f"worker-{i}")
        with dep.api() as http:
            aud = mixed_audience(dep, http, granted, size(20, 200))
            cid = dep.campaign(http, aud.everyone)
            assert http.post(f"/v1/campaigns/{cid}/send").status_code == 200
            wait_for("the first deliveries", lambda: len(dep.received()) >= granted // 10, 60)
            acks, latencies = _withdraw(dep, http, aud.granted, withdrawals)
            status = dep.wait_done(http, cid, size(120, 600))
        received = dep.received()
    late = [m for m in received if m["to"] in acks and _received_us(m) > acks[m["to"]]]
    early = [m for m in received if m["to"] in acks and _received_us(m) <= acks[m["to"]]]
    line = report(
        f"{len(acks)} withdrawals during a {len(aud.everyone)}-recipient campaign on "
        f"{WORKERS} workers (sqlite): {len(early)} of their messages received before the "
        f"acknowledgement, {len(late)} after it; acknowledgement took median "
        f"{sorted(latencies)[len(latencies) // 2] * 1000:.0f} ms, max "
        f"{max(latencies) * 1000:.0f} ms; campaign sent {status['sent']}, skipped "
        f"{status['skipped']} of {len(aud.everyone)}"
    )
    assert not late, line
    assert status["sent"] <= len(aud.granted) - len(acks) + len(early), line


def _up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _withdraw(
    dep: Stack, http: httpx.Client, granted: list[str], count: int
) -> tuple[dict[str, float], list[float]]:
    """Withdraw ``count`` recipients not received yet, one request at a time; returns each
    number's acknowledgement instant (wall clock) and the requests' latencies."""
    rng = random.Random(11)
    acks: dict[str, float] = {}
    latencies: list[float] = []
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60))
    got: set[str] = set()
    for i in range(count):
        if i % 5 == 0:  # what the carrier holds, every few withdrawals (a big read)
            got = {m["to"] for m in dep.received()}
        pending = [n for n in granted if n not in got and n not in acks]
        if not pending:
            break
        number = rng.choice(pending)
        t0 = time.monotonic()
        r = http.post(
            "/v1/consent-events",
            json={
                "consent_id": f"race-w-{i}",
                "phone": number,
                "consent_type": PURPOSE,
                "status": "withdrawn",
                "timestamp": stamp,
                "source": "web",
            },
        )
        acks[number] = time.time()
        latencies.append(time.monotonic() - t0)
        assert r.status_code == 201, r.text
        time.sleep(rng.uniform(0.0, 0.05))
    return acks, latencies
