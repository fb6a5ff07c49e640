"""kill -9 dispatch workers during a campaign: three ``consentgate worker --kind dispatch``
processes on PostgreSQL share the queue (``FOR UPDATE SKIP LOCKED`` with leases), one of them
is killed mid-send again and again and a fresh one started in its place (under ``make
reliability`` on SQLite as well: three worker processes on one database file). At the carrier every
eligible recipient has exactly one message and no withdrawn or never-consented number has any.

Small batches, a short lease and a per-process rate limit keep the campaign in flight across
the kills; a killed worker's claims come back to the pool when its lease runs out, and a
message it had started is taken over under its stored id (the carrier de-duplicates by it).
"""

from __future__ import annotations

import random
from functools import partial
from pathlib import Path

import pytest

from tests.reliability.procs import (
    ReliabilityCluster,
    Stack,
    exactly_once,
    full,
    mixed_audience,
    report,
    size,
    stack,
    wait_for,
)

WORKERS = 3


def _reached(dep: Stack, count: int) -> bool:
    return len(dep.received()) >= count


@pytest.mark.parametrize("backend", ["pg", "sqlite"] if full() else ["pg"])
def test_killed_dispatch_workers_send_each_eligible_recipient_once(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    cluster: ReliabilityCluster | None = (
        request.getfixturevalue("rel_cluster") if backend == "pg" else None
    )
    granted, other, kills = size(240, 3000), size(40, 500), size(3, 10)
    settings = {
        "CONSENTGATE_DISPATCH_LEASE_SECONDS": "2",
        "CONSENTGATE_DISPATCH_BATCH": "25",
        "CONSENTGATE_PROVIDER_RATE_RBM": str(size(60, 300)),
    }
    with stack(backend, tmp_path, cluster, **settings) as dep:
        dep.create_tenant()
        dep.start_serve("--no-workers")
        workers = [dep.start_worker(f"worker-{i}") for i in range(WORKERS)]
        rng = random.Random(3)
        with dep.api() as http:
            aud = mixed_audience(dep, http, granted, other)
            cid = dep.campaign(http, aud.everyone)
            r = http.post(f"/v1/campaigns/{cid}/send")
            assert r.status_code == 200, r.text
            killed = []
            step = granted // (kills + 2)
            for k in range(kills):
                target = (k + 1) * step
                wait_for(f"{target} deliveries", partial(_reached, dep, target), 120)
                victim = rng.randrange(WORKERS)
                workers[victim].kill9()
                killed.append(len(dep.received()))
                workers[victim] = dep.start_worker(f"worker-{victim}-{k}")
            status = dep.wait_done(http, cid, size(120, 600))
        received = dep.received()
        once, none, many, wrong = exactly_once(received, aud)
        line = report(
            f"kill -9 dispatch worker x{kills} of {WORKERS} ({backend}), at "
            f"{killed} deliveries: {len(aud.granted)} eligible recipients, {once} received "
            f"exactly one message, {none} none, {many} more than one; "
            f"{len(aud.withdrawn) + len(aud.never)} ineligible "
            f"({len(aud.withdrawn)} withdrawn, {len(aud.never)} never consented) received "
            f"{wrong}; carrier holds {len(received)} messages; campaign sent "
            f"{status['sent']}, skipped {status['skipped']}"
        )
        assert once == len(aud.granted) and none == many == wrong == 0, line
        assert len(received) == len(aud.granted) == status["sent"], line
        assert all(count < len(aud.granted) for count in killed), line  # killed mid-campaign
