"""Group commit: requests queued behind a commit in flight share the next transaction, each
gets its own answer, and one failing request never fails (or leaks into) its neighbours."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import func, select

from consentgate.bootstrap import App
from consentgate.consent.ingest import EventInput, IngestResult
from consentgate.errors import Conflict
from consentgate.ledger.verify import verify_tenant
from consentgate.storage.engine import read_tx, write_tx
from consentgate.storage.tables import checkpoints


def _event(consent_id: str, phone: str, status: str = "granted") -> EventInput:
    return EventInput(
        consent_id=consent_id,
        consent_type="marketing_rcs",
        status=status,
        timestamp="2026-11-01T10:00:00Z",
        phone=phone,
    )


def _submit(core: App, event: EventInput) -> list[IngestResult]:
    prepared = core.ingest.prepare("acme", "GB", [event], batch=False)
    return core.committer.submit("acme", prepared)


def _queued(core: App) -> int:
    return len(core.committer._queues.get("acme", []))


def _checkpoint_count(core: App) -> int:
    with read_tx(core.engine) as conn:
        return int(conn.execute(select(func.count()).select_from(checkpoints)).scalar_one())


def test_queued_requests_share_one_transaction(core: App, tenant: dict[str, Any]) -> None:
    events = [_event(f"g-{i}", f"+4479111{i:05d}") for i in range(6)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        with write_tx(core.engine) as conn:
            core.ledger.lock_head(conn, "acme")  # a commit "in flight" holds the tenant
            first = pool.submit(_submit, core, events[0])
            deadline = time.monotonic() + 10
            while _queued(core) != 0 and time.monotonic() < deadline:
                time.sleep(0.005)  # the first request took the lead and is waiting on us
            rest = [pool.submit(_submit, core, e) for e in events[1:]]
            while _queued(core) < 5 and time.monotonic() < deadline:
                time.sleep(0.005)
            assert _queued(core) == 5
        results = [f.result(timeout=30) for f in [first, *rest]]
    assert sorted(r[0].seq for r in results) == list(range(6))
    assert all(r[0].created for r in results)
    assert _checkpoint_count(core) == 2  # the leader alone, then the five queued together
    with read_tx(core.engine) as conn:
        assert verify_tenant(conn, "acme", core.ledger).tree_size == 6


def test_a_failing_request_does_not_fail_its_group(core: App, tenant: dict[str, Any]) -> None:
    _submit(core, _event("taken", "+447911100000"))
    good = [_event(f"ok-{i}", f"+4479112{i:05d}") for i in range(3)]
    clash = _event("taken", "+447911100000", status="withdrawn")  # same id, other content
    futures: list[Future[list[IngestResult]]] = []
    with ThreadPoolExecutor(max_workers=5) as pool:
        with write_tx(core.engine) as conn:
            core.ledger.lock_head(conn, "acme")
            futures.append(pool.submit(_submit, core, good[0]))
            deadline = time.monotonic() + 10
            while _queued(core) != 0 and time.monotonic() < deadline:
                time.sleep(0.005)
            futures += [pool.submit(_submit, core, e) for e in (good[1], clash, good[2])]
            while _queued(core) < 3 and time.monotonic() < deadline:
                time.sleep(0.005)
        assert futures[0].result(timeout=30)[0].created
        assert futures[1].result(timeout=30)[0].created
        with pytest.raises(Conflict):
            futures[2].result(timeout=30)
        assert futures[3].result(timeout=30)[0].created
    with read_tx(core.engine) as conn:
        report = verify_tenant(conn, "acme", core.ledger)
    assert report.tree_size == 4  # "taken" once, and the three good ones


def test_many_threads_no_loss(core: App, tenant: dict[str, Any]) -> None:
    def run(worker: int) -> list[int]:
        phones = [f"+4479111{(1000 + worker * 20 + i):05d}" for i in range(20)]
        return [_submit(core, _event(f"w{worker}-{i}", p))[0].seq for i, p in enumerate(phones)]

    barrier = threading.Barrier(8)

    def start(worker: int) -> list[int]:
        barrier.wait()
        return run(worker)

    with ThreadPoolExecutor(max_workers=8) as pool:
        seqs = [s for part in pool.map(start, range(8)) for s in part]
    assert sorted(seqs) == list(range(160))
    with read_tx(core.engine) as conn:
        report = verify_tenant(conn, "acme", core.ledger)
    assert report.tree_size == 160
    assert report.checkpoints <= 160
