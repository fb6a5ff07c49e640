"""The ledger's signing lag as /metrics reads it from the store (SQLite and PostgreSQL): leaves
past the newest signed checkpoint and how long that checkpoint has lagged the head, with
checkpoints signed in every commit (always 0) and by the checkpoint workers (deferred)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from consentgate.bootstrap import App, build
from consentgate.config import load_settings
from consentgate.consent.ingest import EventInput
from consentgate.domain.clock import FixedClock
from consentgate.domain.timeutil import format_rfc3339, to_micros
from consentgate.observability.store import StoreCollector, ledger_checkpoints
from consentgate.storage.engine import write_tx


def _events(app: App, clock: FixedClock, start: int, count: int) -> None:
    at = format_rfc3339(clock.now() - timedelta(minutes=5))
    app.ingest.ingest(
        "acme",
        "GB",
        [
            EventInput(f"ck-{i}", "marketing_rcs", "granted", at, phone=f"+4479112{i:05d}")
            for i in range(start, start + count)
        ],
        batch=True,
    )


def _lag(app: App, clock: FixedClock) -> tuple[float, float]:
    registry = CollectorRegistry()
    registry.register(StoreCollector(app.engine, clock, [ledger_checkpoints]))
    found = {
        (s.name, s.labels.get("tenant")): s.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
    }
    assert found[("consentgate_store_up", None)] == 1
    return (
        found[("consentgate_ledger_unsigned_leaves", "acme")],
        found[("consentgate_ledger_checkpoint_age_seconds", "acme")],
    )


@pytest.fixture
def deferred(env: dict[str, str], clock: FixedClock) -> Iterator[App]:
    app = build(load_settings({**env, "CONSENTGATE_CHECKPOINT_ON_COMMIT": "false"}), clock=clock)
    app.tenants.create("acme", "GB")
    yield app
    app.close()


def test_signed_in_every_commit_nothing_lags(
    core: App, tenant: dict[str, str], clock: FixedClock
) -> None:
    assert _lag(core, clock) == (0, 0)  # an empty ledger has nothing to sign
    _events(core, clock, 0, 3)
    clock.advance(timedelta(minutes=10))
    assert _lag(core, clock) == (0, 0)


def test_deferred_signing_lag(deferred: App, clock: FixedClock) -> None:
    _events(deferred, clock, 0, 4)  # nothing signed yet: as old as the first leaf
    clock.advance(timedelta(seconds=30))
    assert _lag(deferred, clock) == (4, 30)

    with write_tx(deferred.engine) as conn:  # what a checkpoint worker pass does
        signed = deferred.ledger.sign_head(conn, "acme", to_micros(clock.now()))
    assert signed is not None
    assert signed.tree_size == 4
    assert _lag(deferred, clock) == (0, 0)

    clock.advance(timedelta(seconds=10))
    _events(deferred, clock, 4, 2)
    clock.advance(timedelta(seconds=60))
    assert _lag(deferred, clock) == (2, 70)  # the newest checkpoint's age
