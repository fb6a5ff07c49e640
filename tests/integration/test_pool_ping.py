"""PostgreSQL connections cut while idle in the pool are replaced before use (storage.engine
pings only connections idle longer than IDLE_PING_SECONDS, not every checkout)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.pool import QueuePool

from consentgate.bootstrap import App
from consentgate.errors import StoreUnavailable
from consentgate.gate.notify import libpq_dsn
from consentgate.storage import engine as storage
from consentgate.storage.engine import read_tx


def _cut_idle_pooled_connection(core: App) -> None:
    """Terminate, from a session outside the pool, the backend of the pool's only
    connection while it sits idle in the pool."""
    core.engine.dispose()
    with read_tx(core.engine) as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    assert isinstance(core.engine.pool, QueuePool) and core.engine.pool.checkedin() == 1
    with psycopg.connect(libpq_dsn(core.engine), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


def _read(core: App) -> Any:
    with read_tx(core.engine) as conn:
        return conn.execute(text("SELECT 1")).scalar_one()


@pytest.mark.parametrize("backend", ["pg"], indirect=True)
def test_a_connection_cut_while_idle_is_replaced(
    core: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage, "IDLE_PING_SECONDS", 0.0)  # every pooled one counts as idle
    for _ in range(3):
        _cut_idle_pooled_connection(core)
        assert _read(core) == 1  # the dead one was pinged, dropped and replaced


@pytest.mark.parametrize("backend", ["pg"], indirect=True)
def test_without_the_idle_ping_the_cut_connection_fails_closed_once(
    core: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control: never pinging, the cut connection reaches a caller, who gets
    StoreUnavailable (fail closed); the pool then recovers on its own."""
    monkeypatch.setattr(storage, "IDLE_PING_SECONDS", float("inf"))
    _cut_idle_pooled_connection(core)
    failed = 0
    for _ in range(3):
        try:
            assert _read(core) == 1
        except StoreUnavailable:
            failed += 1
    assert failed == 1
