"""The end of a dispatch pass: what became of each claimed recipient, written at once.

Decisions with their ``message.decided`` outbox events, the recipients' new states (done, with
the number purged; or queued again: a provider outage with backoff, a claim handed back
untried, a key another worker holds), the sealed numbers of revocable sends, and the metrics:
one transaction of batched statements (:mod:`consentgate.delivery.bulk`). Then the second
look at consent for what was just sent (:func:`~consentgate.delivery.revocation.
revoke_if_withdrawn`), and campaigns whose last recipient completed are closed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, select, update

from consentgate.delivery import bulk
from consentgate.delivery.planner import ConsentCheck, ConsentRefused
from consentgate.delivery.revocation import REVOCABLE, hold, revoke_if_withdrawn
from consentgate.delivery.sending import Outcome, count_decisions, record_outcomes
from consentgate.domain.clock import Clock
from consentgate.domain.reasons import ReasonCode
from consentgate.domain.timeutil import to_micros
from consentgate.gate.gate import ConsentGate
from consentgate.observability.metrics import Metrics
from consentgate.outbox import events as outbox_events
from consentgate.outbox.store import OutboxWriter
from consentgate.storage.engine import write_tx
from consentgate.storage.tables import campaign_recipients, campaigns, messages, subject_links

MAX_ATTEMPTS = 5
RETRY_BASE = timedelta(seconds=2)
DONE_NO_MESSAGE = {"state": "done", "action": "skipped", "reason": "ambiguous"}
RECIPIENT_KEY = {"campaign_id": "varchar", "seq": "bigint"}

_NO_CONSENT = ConsentRefused(ReasonCode.NO_CONSENT)


@dataclass(slots=True, eq=False)
class Recipient:
    """One claimed recipient through a dispatch pass."""

    row: Any  # the claimed campaign_recipients row (+ template_id, consent_type)
    attempt: int
    e164: str = field(default="", repr=False)
    hashes: dict[int, str] = field(default_factory=dict)
    message_id: str | None = None
    ref: str | None = None
    consent: ConsentCheck = _NO_CONSENT
    outcome: Outcome | None = None
    answer: Any = None  # the stored message row, when the key was answered before
    values: dict[str, Any] | None = None  # the recipient's new state
    released: bool = False  # its claim is given back untried

    key: str = ""  # the idempotency key, campaign:<id>:<seq>

    @property
    def current(self) -> str:
        return self.hashes[max(self.hashes)]


class Settler:
    def __init__(
        self,
        engine: Engine,
        gate: ConsentGate,
        clock: Clock,
        metrics: Metrics,
        outbox: OutboxWriter | None,
    ) -> None:
        self._engine = engine
        self._gate = gate
        self._clock = clock
        self._metrics = metrics
        self._outbox = outbox

    def _now_us(self) -> int:
        return to_micros(self._clock.now())

    def record(self, tenant: str, items: list[Recipient]) -> None:
        """Outcomes, outbox events and recipient states in one transaction."""
        now = self._now_us()
        outcomes = [i.outcome for i in items if i.outcome is not None]
        for item in items:
            if item.values is not None:
                continue
            if item.outcome is not None or item.answer is not None:
                item.values = {}  # from the stored row below
            else:  # released untried (or never reached): due again at once
                item.values = {"state": "queued", "due_us": now}
        with write_tx(self._engine) as conn:
            stored = record_outcomes(
                conn,
                tenant,
                outcomes,
                self._outbox,
                now,
                consent_type=items[0].row.consent_type,
                campaign_id=items[0].row.campaign_id,
            )
            by_id = {row.id: row for row in stored}
            released = [str(i.message_id) for i in items if i.released]
            if released:
                conn.execute(
                    delete(messages).where(
                        messages.c.id.in_(released), messages.c.status == "pending"
                    )
                )
            params = []
            for item in items:
                row = item.answer if item.answer is not None else by_id.get(str(item.message_id))
                values = item.values if item.values else self._settled(item, row, now)
                params.append(_recipient_params(item.row, values))
            bulk.update_rows(conn, "campaign_recipients", RECIPIENT_KEY, _RECIPIENT, params)
            lost = [i for i in items if i.values == DONE_NO_MESSAGE]  # dicts, by value
            self._decided_without_message(conn, tenant, lost, now)
            revocable = [
                i
                for i in items
                if i.outcome is not None
                and i.outcome.status == "sent"
                and i.outcome.provider in REVOCABLE
                and i.ref is not None
            ]
            hold(
                conn,
                tenant,
                [
                    (
                        str(i.message_id),
                        str(i.ref),
                        i.row.consent_type,
                        str(i.outcome.provider),
                        str(i.outcome.provider_message_id),
                        f"{i.row.campaign_id}:{i.row.seq}",
                        i.row.sealed,
                        i.row.wrapped_key,
                    )
                    for i in revocable
                    if i.outcome is not None
                ],
                now,
            )
        # A withdrawal that committed after the batch's check but before these sends were
        # stored is not seen by the revoker's scan: look once more.
        sent = [(str(i.message_id), str(i.ref)) for i in revocable]
        revoke_if_withdrawn(self._engine, self._gate, tenant, items[0].row.consent_type, sent, now)
        count_decisions(self._metrics, tenant, stored)
        retried = sum(1 for p in params if p["state"] == "queued")
        self._metrics.campaign_recipients(tenant, "retried", retried)
        self._metrics.campaign_recipients(tenant, "done", len(items) - retried)

    def _settled(self, item: Recipient, row: Any, now: int) -> dict[str, Any]:
        unavailable = row.status == "failed" and row.reason == ReasonCode.PROVIDER_UNAVAILABLE
        if unavailable and item.attempt < MAX_ATTEMPTS:
            backoff = RETRY_BASE * (2 ** (item.attempt - 1))
            return {"state": "queued", "due_us": now + int(backoff.total_seconds() * 1e6)}
        return {
            "state": "done",
            "action": row.action,
            "mode": row.mode,
            "reason": row.reason,
            "message_id": row.id,
        }

    def _decided_without_message(
        self, conn: Connection, tenant: str, items: list[Recipient], now: int
    ) -> None:
        """Recipients settled without a message (not sendable as stored): their
        ``message.decided`` (no message_id) goes out like any other decision."""
        items = [i for i in items if i.row.hashed_id is not None]
        if self._outbox is None or not items:
            return
        refs = dict(
            conn.execute(
                select(subject_links.c.hashed_id, subject_links.c.subject_ref).where(
                    subject_links.c.tenant_id == tenant,
                    subject_links.c.hashed_id.in_([i.row.hashed_id for i in items]),
                )
            ).all()
        )
        events = [
            outbox_events.message_decided(
                message_id=None,
                subject_ref=refs.get(i.row.hashed_id),
                hashed_id=i.row.hashed_id,
                consent_type=i.row.consent_type,
                action="skipped",
                mode=None,
                reason=ReasonCode.AMBIGUOUS.value,
                consent_seq=None,
                campaign_id=i.row.campaign_id,
            )
            for i in items
        ]
        self._outbox.record(conn, tenant, events, now)

    def close_finished(self, campaign_ids: set[str]) -> None:
        for campaign_id in campaign_ids:
            with write_tx(self._engine) as conn:
                close_if_finished(conn, [campaign_id], self._now_us())


def close_if_finished(conn: Connection, campaign_ids: Iterable[str], now_us: int) -> None:
    """Mark done each queued or running campaign of ``campaign_ids`` that has no open
    recipient left (the dispatcher after settling a batch; an erasure after skipping the
    subject's queued sends)."""
    for campaign_id in campaign_ids:
        still_open = conn.execute(
            select(func.count())
            .select_from(campaign_recipients)
            .where(
                campaign_recipients.c.campaign_id == campaign_id,
                campaign_recipients.c.state != "done",
            )
        ).scalar_one()
        if not still_open:
            conn.execute(
                update(campaigns)
                .where(campaigns.c.id == campaign_id, campaigns.c.status.in_(["queued", "running"]))
                .values(status="done", updated_us=now_us)
            )


_RECIPIENT = {
    "state": "varchar",
    "due_us": "bigint",
    "action": "varchar",
    "mode": "varchar",
    "reason": "varchar",
    "message_id": "varchar",
    "sealed": "bytea",
    "wrapped_key": "bytea",
}


def _recipient_params(row: Any, values: dict[str, Any]) -> dict[str, Any]:
    """One recipient's new state; the number is purged once it is done."""
    done = values["state"] == "done"
    return {
        "campaign_id": row.campaign_id,
        "seq": row.seq,
        "state": values["state"],
        "due_us": values.get("due_us", row.due_us),
        "action": values.get("action"),
        "mode": values.get("mode"),
        "reason": values.get("reason"),
        "message_id": values.get("message_id"),
        "sealed": None if done else row.sealed,
        "wrapped_key": None if done else row.wrapped_key,
    }
