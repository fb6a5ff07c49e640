"""Retention: per-tenant horizons (:mod:`domain.retention`) and the run that applies them.

A run deletes, per tenant, what is older than its horizon: delivery events; send decisions
with their events; finished or abandoned campaigns with their recipient rows; delivered or
dead outbox events with their deliveries; cached CMP webhook answers. Ledger leaves, nodes and
checkpoints are never touched (the database refuses it anyway: append-only triggers).

Each batch (``batch_size`` rows, default 1000) is its own short transaction, so a run over
millions of rows never holds a lock for long and can be interrupted and resumed at any point.
A run also re-scrubs send decisions of subjects erased in the last week: a send that was in
flight while its subject was erased can finish after the erasure and write its links back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Select, delete, exists, insert, select, update

from consentgate.domain.clock import Clock
from consentgate.domain.retention import DEFAULT_POLICY, RetentionPolicy, cutoffs, policy_from
from consentgate.domain.timeutil import to_micros
from consentgate.errors import NotFound
from consentgate.privacy.erasure import scrub_messages
from consentgate.privacy.scrub import StorageScrubber
from consentgate.storage.engine import read_tx, write_tx
from consentgate.storage.tables import (
    campaign_recipients,
    campaigns,
    erasures,
    message_events,
    messages,
    outbox_deliveries,
    outbox_events,
    retention_settings,
    webhook_receipts,
)
from consentgate.tenants.service import TenantService

log = logging.getLogger("consentgate.privacy")

SWEEP_WINDOW = timedelta(days=7)
# Campaigns in these states are live: their recipients are being dispatched.
_LIVE_CAMPAIGNS = ("queued", "running")


class RetentionService:
    def __init__(
        self,
        engine: Engine,
        tenants: TenantService,
        clock: Clock,
        scrubber: StorageScrubber,
        *,
        batch_size: int = 1000,
    ) -> None:
        self._engine = engine
        self._tenants = tenants
        self._clock = clock
        self._scrubber = scrubber
        self._batch = batch_size

    # -- settings ----------------------------------------------------------------------------
    def policy(self, tenant: str) -> RetentionPolicy:
        self._known(tenant)
        with read_tx(self._engine) as conn:
            return self._policy(conn, tenant)

    def _policy(self, conn: Connection, tenant: str) -> RetentionPolicy:
        row = conn.execute(
            select(retention_settings).where(retention_settings.c.tenant_id == tenant)
        ).one_or_none()
        if row is None:
            return DEFAULT_POLICY
        return RetentionPolicy(
            int(row.delivery_events_days), int(row.send_decisions_days), int(row.outbox_days)
        )

    def set_policy(self, tenant: str, values: Mapping[str, Any]) -> RetentionPolicy:
        """Replace the tenant's policy (fields left out take their defaults)."""
        policy = policy_from(values)
        self._known(tenant)
        now_us = to_micros(self._clock.now())
        with write_tx(self._engine) as conn:
            updated = conn.execute(
                update(retention_settings)
                .where(retention_settings.c.tenant_id == tenant)
                .values(**policy.as_dict(), updated_us=now_us)
            ).rowcount
            if not updated:
                conn.execute(
                    insert(retention_settings).values(
                        tenant_id=tenant, **policy.as_dict(), updated_us=now_us
                    )
                )
        return policy

    def _known(self, tenant: str) -> None:
        if not self._tenants.exists(tenant):
            raise NotFound(f"no tenant named {tenant!r}")

    # -- the run -----------------------------------------------------------------------------
    def run(self, tenants: Sequence[str] | None = None, *, compact: bool = False) -> dict[str, Any]:
        """Apply every tenant's policy (or only ``tenants``'); counts of rows deleted per
        table and tenant, and what was done to push the bytes out of the files."""
        names = list(tenants) if tenants is not None else self._tenants.names()
        for name in names:
            self._known(name)
        report: dict[str, Any] = {"tenants": {}}
        touched: set[str] = set()
        for name in names:
            with read_tx(self._engine) as conn:
                policy = self._policy(conn, name)
            counts = self._run_tenant(name, policy)
            touched.update(t for t, n in counts.items() if n and t != "messages_rescrubbed")
            if counts.get("messages_rescrubbed"):
                touched.add("messages")
            report["tenants"][name] = {"policy": policy.as_dict(), "deleted": counts}
        if touched or compact:
            report["storage"] = self._scrubber.after_delete(
                sorted(touched | (_PERSONAL if compact else set())), full=compact
            )
        return report

    def _run_tenant(self, tenant: str, policy: RetentionPolicy) -> dict[str, int]:
        now = self._clock.now()
        cut = cutoffs(policy, now)
        counts: dict[str, int] = {}

        def add(table: str, n: int) -> None:
            counts[table] = counts.get(table, 0) + n

        for campaign_id in self._expired_campaigns(tenant, cut.send_decisions_us):
            add("campaign_recipients", self._drop_campaign(campaign_id))
            add("campaigns", 1)
        add(
            "message_events",
            self._drain(
                select(message_events.c.id).where(
                    message_events.c.tenant_id == tenant,
                    message_events.c.at_us < cut.delivery_events_us,
                ),
                lambda conn, ids: _delete_in(conn, message_events, message_events.c.id, ids),
            ),
        )
        decided = select(messages.c.id).where(
            messages.c.tenant_id == tenant,
            messages.c.created_us < cut.send_decisions_us,
            messages.c.status != "pending",  # a claim in flight is never pulled from under it
        )

        def drop_decisions(conn: Connection, ids: list[Any]) -> int:
            add(
                "message_events", _delete_in(conn, message_events, message_events.c.message_id, ids)
            )
            return _delete_in(conn, messages, messages.c.id, ids)

        add("messages", self._drain(decided, drop_decisions))
        add(
            "webhook_receipts",
            self._drain(
                select(webhook_receipts.c.webhook_id).where(
                    webhook_receipts.c.tenant_id == tenant,
                    webhook_receipts.c.received_us < cut.outbox_us,
                ),
                lambda conn, ids: int(
                    conn.execute(
                        delete(webhook_receipts).where(
                            webhook_receipts.c.tenant_id == tenant,
                            webhook_receipts.c.webhook_id.in_(ids),
                        )
                    ).rowcount
                ),
            ),
        )
        finished = select(outbox_events.c.seq).where(
            outbox_events.c.tenant_id == tenant,
            outbox_events.c.created_us < cut.outbox_us,
            # Delivered or dead everywhere: an event still owed to an endpoint stays.
            ~exists().where(
                outbox_deliveries.c.event_seq == outbox_events.c.seq,
                outbox_deliveries.c.status == "pending",
            ),
        )

        def drop_events(conn: Connection, seqs: list[Any]) -> int:
            add(
                "outbox_deliveries",
                _delete_in(conn, outbox_deliveries, outbox_deliveries.c.event_seq, seqs),
            )
            return _delete_in(conn, outbox_events, outbox_events.c.seq, seqs)

        add("outbox_events", self._drain(finished, drop_events))
        add("messages_rescrubbed", self._sweep_erased(tenant, to_micros(now - SWEEP_WINDOW)))
        return counts

    def _drain(self, keys: Select[Any], remove: Callable[[Connection, list[Any]], int]) -> int:
        """Delete in batches, each in its own transaction, until nothing matches."""
        total = 0
        while True:
            with write_tx(self._engine) as conn:
                ids = list(conn.execute(keys.limit(self._batch)).scalars())
                if ids:
                    total += remove(conn, ids)
            if len(ids) < self._batch:
                return total

    def _expired_campaigns(self, tenant: str, cutoff_us: int) -> list[str]:
        """Campaigns finished (or drafts left alone) for longer than the decisions horizon."""
        with read_tx(self._engine) as conn:
            return list(
                conn.execute(
                    select(campaigns.c.id).where(
                        campaigns.c.tenant_id == tenant,
                        campaigns.c.updated_us < cutoff_us,
                        campaigns.c.status.not_in(_LIVE_CAMPAIGNS),
                    )
                ).scalars()
            )

    def _drop_campaign(self, campaign_id: str) -> int:
        removed = self._drain(
            select(campaign_recipients.c.seq).where(
                campaign_recipients.c.campaign_id == campaign_id
            ),
            lambda conn, seqs: int(
                conn.execute(
                    delete(campaign_recipients).where(
                        campaign_recipients.c.campaign_id == campaign_id,
                        campaign_recipients.c.seq.in_(seqs),
                    )
                ).rowcount
            ),
        )
        with write_tx(self._engine) as conn:
            conn.execute(delete(campaigns).where(campaigns.c.id == campaign_id))
        return removed

    def _sweep_erased(self, tenant: str, since_us: int) -> int:
        with write_tx(self._engine) as conn:
            recent = (
                select(erasures.c.subject_ref)
                .where(erasures.c.tenant_id == tenant, erasures.c.erased_us >= since_us)
                .scalar_subquery()
            )
            return scrub_messages(conn, tenant, messages.c.subject_ref.in_(recent))


def _delete_in(conn: Connection, table: Any, column: Any, ids: list[Any]) -> int:
    return int(conn.execute(delete(table).where(column.in_(ids))).rowcount)


# The tables that hold (or held) links to people: what ``--compact`` rewrites.
_PERSONAL = {
    "subject_links",
    "consent_state",
    "devices",
    "campaign_recipients",
    "messages",
    "webhook_receipts",
    "analytics_conversions",
    "outbox_events",
    "outbox_deliveries",
}
