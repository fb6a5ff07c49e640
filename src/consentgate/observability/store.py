"""Gauges read from the database at scrape time: the work queues and the ledger's signing lag,
as every process sees them.

A counter in one process cannot say how deep a queue is when several processes fill and
drain it, so queue depths are asked of the store on each scrape, with cheap queries only:
counts over the *open* part of a queue through the index its workers claim by (the done part,
which grows without bound, is never counted), and the oldest due item by an index MIN.
A store that cannot answer turns ``consentgate_store_up`` to 0 and drops the gauges for that
scrape instead of failing it: the process counters are still worth having.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Connection, Engine, func, select, text
from sqlalchemy.exc import SQLAlchemyError

from consentgate.domain.clock import Clock
from consentgate.domain.timeutil import to_micros
from consentgate.errors import ConsentGateError
from consentgate.storage.engine import read_tx
from consentgate.storage.tables import (
    campaign_recipients,
    checkpoints,
    ledger_entries,
    ledger_heads,
    outbox_deliveries,
    tenants,
)

log = logging.getLogger("consentgate.metrics")

#: The states of a campaign recipient that are still work (``done`` is history).
OPEN_RECIPIENT_STATES = ("pending", "queued", "claimed")

Probe = Callable[[Connection, int], Iterator[Metric]]


def campaign_queue(conn: Connection, now_us: int) -> Iterator[Metric]:
    """Open campaign recipients by state, and how far behind the oldest queued one is."""
    depth = GaugeMetricFamily(
        "consentgate_campaign_queue_depth",
        "Campaign recipients not yet done, by state (pending: uploaded, not yet sent; "
        "queued: passed the pre-filter, waiting for a worker; claimed: a worker holds it)",
        labels=["state"],
    )
    counts = dict.fromkeys(OPEN_RECIPIENT_STATES, 0)
    for state, n in conn.execute(
        select(campaign_recipients.c.state, func.count())
        .where(campaign_recipients.c.state.in_(OPEN_RECIPIENT_STATES))
        .group_by(campaign_recipients.c.state)
    ):
        counts[str(state)] = int(n)
    for state, n in counts.items():
        depth.add_metric([state], n)
    yield depth
    oldest = conn.execute(
        select(func.min(campaign_recipients.c.due_us)).where(
            campaign_recipients.c.state == "queued"
        )
    ).scalar()
    lag = GaugeMetricFamily(
        "consentgate_campaign_queue_lag_seconds",
        "How long the oldest queued campaign recipient has been due (0 when none is overdue)",
    )
    lag.add_metric([], 0.0 if oldest is None else max(0.0, (now_us - int(oldest)) / 1e6))
    yield lag


def webhook_queue(conn: Connection, now_us: int) -> Iterator[Metric]:
    """Per tenant: webhook deliveries pending (waiting, in flight or backing off) and dead
    (given up; replayable), and the age of the oldest pending one. One statement, each figure
    a correlated lookup on the (tenant_id, status, id) index: no scan of delivered history."""
    d = outbox_deliveries

    def count(status: str) -> Any:
        return (
            select(func.count())
            .where(d.c.tenant_id == tenants.c.id, d.c.status == status)
            .scalar_subquery()
        )

    oldest = (
        select(d.c.queued_us)
        .where(d.c.tenant_id == tenants.c.id, d.c.status == "pending")
        .order_by(d.c.id)
        .limit(1)
        .scalar_subquery()
    )
    depth = GaugeMetricFamily(
        "consentgate_webhook_queue_depth",
        "CRM/CMP webhook deliveries by status: pending (due, in flight or backing off "
        "after a failure) and dead (given up after the retry window; replayable)",
        labels=["tenant", "status"],
    )
    age = GaugeMetricFamily(
        "consentgate_webhook_oldest_pending_seconds",
        "Age of the tenant's oldest pending webhook delivery (0 when none is pending)",
        labels=["tenant"],
    )
    rows = conn.execute(
        select(tenants.c.id, count("pending"), count("dead"), oldest).order_by(tenants.c.id)
    )
    for tenant, pending, dead, queued_us in rows:
        depth.add_metric([tenant, "pending"], int(pending))
        depth.add_metric([tenant, "dead"], int(dead))
        age.add_metric(
            [tenant], 0.0 if queued_us is None else max(0.0, (now_us - int(queued_us)) / 1e6)
        )
    yield depth
    yield age


def ledger_checkpoints(conn: Connection, now_us: int) -> Iterator[Metric]:
    """Per tenant: leaves past the newest signed checkpoint, and how long that checkpoint has
    lagged the head. Receipts and proofs of unsigned leaves need a newer checkpoint, and a
    saved checkpoint (the restore check) covers only what was signed. Each figure is one
    probe of the checkpoints primary key (tenant_id, tree_size) per tenant."""
    newest = (
        select(checkpoints.c.tree_size, checkpoints.c.created_us)
        .where(checkpoints.c.tenant_id == ledger_heads.c.tenant_id)
        .order_by(checkpoints.c.tree_size.desc())
        .limit(1)
    )
    unsigned = GaugeMetricFamily(
        "consentgate_ledger_unsigned_leaves",
        "Ledger leaves not yet covered by a signed checkpoint (0 when checkpoints are signed "
        "in every append commit)",
        labels=["tenant"],
    )
    age = GaugeMetricFamily(
        "consentgate_ledger_checkpoint_age_seconds",
        "While leaves are unsigned: age of the tenant's newest signed checkpoint (0 when it "
        "covers the head)",
        labels=["tenant"],
    )
    rows = conn.execute(
        select(
            ledger_heads.c.tenant_id,
            ledger_heads.c.tree_size,
            newest.with_only_columns(checkpoints.c.tree_size).scalar_subquery(),
            newest.with_only_columns(checkpoints.c.created_us).scalar_subquery(),
        ).order_by(ledger_heads.c.tenant_id)
    )
    for tenant, head, signed, signed_us in rows:
        behind = max(0, int(head) - int(signed or 0))
        unsigned.add_metric([tenant], behind)
        lag = 0.0
        if behind and signed_us is not None:
            lag = max(0.0, (now_us - int(signed_us)) / 1e6)
        elif behind:  # nothing signed yet: as old as the tenant's first leaf
            first = conn.execute(
                select(func.min(ledger_entries.c.received_us)).where(
                    ledger_entries.c.tenant_id == tenant
                )
            ).scalar()
            lag = 0.0 if first is None else max(0.0, (now_us - int(first)) / 1e6)
        age.add_metric([tenant], lag)
    yield unsigned
    yield age


class StoreCollector(Collector):
    """Runs each probe in one read transaction per scrape (bounded to 2 s on PostgreSQL)."""

    def __init__(self, engine: Engine, clock: Clock, probes: list[Probe] | None = None) -> None:
        self._engine = engine
        self._clock = clock
        self._probes: list[Probe] = list(
            probes or [campaign_queue, webhook_queue, ledger_checkpoints]
        )

    def add_probe(self, probe: Probe) -> None:
        self._probes.append(probe)

    def describe(self) -> list[Metric]:
        return []  # no store query at registration; names are checked at scrape time

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "consentgate_store_up", "1 when the store answered this scrape's queue queries"
        )
        gathered: list[Metric] = []
        try:
            with read_tx(self._engine) as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SET LOCAL statement_timeout = 2000"))
                now_us = to_micros(self._clock.now())
                for probe in self._probes:
                    gathered.extend(probe(conn, now_us))
        except (ConsentGateError, SQLAlchemyError, OSError) as exc:
            log.warning("metrics: store queries failed (%s)", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from gathered


__all__ = [
    "OPEN_RECIPIENT_STATES",
    "Probe",
    "StoreCollector",
    "campaign_queue",
    "ledger_checkpoints",
    "webhook_queue",
]
