"""Ledger appends are serialised per tenant, not globally (PostgreSQL): while one transaction
holds tenant A's head row (what every append takes first), tenant B's append commits, and a
second appender of tenant A waits for the row lock (seen in pg_stat_activity / pg_locks, not
guessed from timing), then continues on top of A once A commits. SQLite has one writer for
the whole file by design, so this is the PostgreSQL deployment's property."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
from sqlalchemy import text

from consentgate.bootstrap import App
from consentgate.consent.ingest import EventInput, IngestResult
from consentgate.domain.timeutil import format_rfc3339
from consentgate.ledger.verify import verify_tenant
from consentgate.storage.engine import read_tx, write_tx

DEADLINE_SECONDS = 30  # how long to wait for something that must happen, never a measurement


def _grant(app: App, tenant: str, consent_id: str, phone: str) -> list[IngestResult]:
    now = format_rfc3339(app.clock.now())
    return app.ingest.ingest(
        tenant,
        "GB",
        [EventInput(consent_id, "marketing_rcs", "granted", now, phone=phone)],
        batch=False,
    )


def _size(app: App, tenant: str) -> int:
    with read_tx(app.engine) as conn:
        return app.ledger.tree_size(conn, tenant)


def _blockers_of_head_waiters(app: App) -> set[int]:
    """Backends that block a backend waiting for a lock while reading a ledger head."""
    with read_tx(app.engine) as conn:
        return {
            int(pid)
            for pid in conn.execute(
                text(
                    "SELECT unnest(pg_blocking_pids(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock' "
                    "AND query LIKE 'SELECT tree_size, frontier FROM ledger_heads%'"
                )
            ).scalars()
        }


def test_tenants_append_in_parallel_and_one_tenant_in_turn(core: App, backend: str) -> None:
    if backend != "pg":
        pytest.skip("SQLite serialises every writer of the file (one writer by design)")
    for name in ("acme", "globex"):
        core.tenants.create(name, "GB")
        _grant(core, name, f"{name}-first", "+447911100001")
    holding, release = threading.Event(), threading.Event()
    holder_pid: list[int] = []

    def hold_acme() -> None:
        with write_tx(core.engine) as conn:
            core.ledger.lock_head(conn, "acme")  # the first step of every append
            holder_pid.append(int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one()))
            holding.set()
            release.wait(DEADLINE_SECONDS)

    with ThreadPoolExecutor(max_workers=3) as pool:
        held = pool.submit(hold_acme)
        assert holding.wait(DEADLINE_SECONDS)
        try:
            # Tenant B commits while A's head is locked: no lock wider than the tenant.
            other = pool.submit(_grant, core, "globex", "globex-second", "+447911100002")
            assert other.result(timeout=DEADLINE_SECONDS)[0].seq == 1
            assert _size(core, "globex") == 2
            # A second appender of tenant A waits on the head row lock.
            second: Future[list[IngestResult]] = pool.submit(
                _grant, core, "acme", "acme-second", "+447911100002"
            )
            deadline = time.monotonic() + DEADLINE_SECONDS
            blockers: set[int] = set()
            while not blockers:
                assert not second.done(), "the second acme append did not wait for the first"
                assert time.monotonic() < deadline, "no backend ever waited for acme's head"
                time.sleep(0.01)
                blockers = _blockers_of_head_waiters(core)
            assert blockers == set(holder_pid)  # waiting for the holder, nothing else
            assert _size(core, "acme") == 1
            assert not second.done()
        finally:
            release.set()
        held.result(timeout=DEADLINE_SECONDS)
        assert second.result(timeout=DEADLINE_SECONDS)[0].seq == 1
    for name in ("acme", "globex"):
        with read_tx(core.engine) as conn:
            assert verify_tenant(conn, name, core.ledger).tree_size == 2
