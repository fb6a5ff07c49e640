"""Writing outbox events, inside the caller's transaction, and removing them.

:meth:`OutboxWriter.record` is called on the connection of the change it reports (a ledger
append, a send decision, a receipt), so the event exists if and only if the change committed.
It costs a fixed number of statements however many events: one read of the tenant's active
endpoints, one multi-row insert of events, one multi-row insert of their deliveries (fan-out
happens here, at write time: an endpoint hears of events recorded after it was registered).

:func:`erase_subject` is for erasure: the payloads hold ``hashed_id`` s, which link a
subject's ledger leaves to a person, so an erased subject's events go entirely, deliveries
included. (Retention deletes finished events by age: ``consentgate.privacy.retention``.)
Erasure then records a ``subject.erased`` notice (:meth:`OutboxWriter.subject_erased`), and
only if some endpoint will receive it; :func:`purge_notices` empties a notice's body once every
delivery of it is finished, so the hashed ids it carries do not outlive it.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    delete,
    insert,
    literal_column,
    select,
    update,
)

from consentgate.domain.timeutil import format_rfc3339, from_micros
from consentgate.outbox import rules
from consentgate.outbox.events import SUBJECT_ERASED, OutboxEvent, purged, render, subject_erased
from consentgate.storage import lean
from consentgate.storage.tables import outbox_deliveries, outbox_events

# A literal, not a bound parameter: SQLite uses a partial index only for a literal match.
PENDING: ColumnElement[str] = literal_column("'pending'")

_ACTIVE_ENDPOINTS = (
    "SELECT id, kind, event_types FROM crm_endpoints WHERE tenant_id = :t AND active = TRUE"
)
_EVENT_COLUMNS = (
    "tenant_id",
    "event_id",
    "event_type",
    "order_key",
    "to_cmp",
    "body",
    "created_us",
)


class OutboxWriter:
    def record(
        self,
        conn: Connection,
        tenant: str,
        events: Sequence[OutboxEvent],
        now_us: int,
        *,
        only_if_wanted: bool = False,
    ) -> int:
        """Add ``events`` (in order) and one pending delivery per subscribed endpoint; return
        the number of deliveries queued. Runs in the caller's transaction. ``only_if_wanted``:
        an event no active endpoint receives is not stored at all (otherwise it is, for the
        record, with no delivery)."""
        if only_if_wanted:
            endpoints = self._endpoints(conn, tenant)
            events = [
                ev
                for ev in events
                if any(rules.wants(k, types, ev.event_type, ev.to_cmp) for _, k, types in endpoints)
            ]
        if not events:
            return 0
        created = format_rfc3339(from_micros(now_us))
        # Event ids: 104 random bits per call, then the event's index (one urandom per commit,
        # not one per event: this runs inside every ingest transaction).
        prefix = secrets.token_hex(13)
        rows: list[dict[str, Any]] = [
            {
                "tenant_id": tenant,
                "event_id": f"{prefix}{i:06x}",
                "event_type": e.event_type,
                "order_key": e.order_key,
                "to_cmp": e.to_cmp,
                "body": render(e, created),
                "created_us": now_us,
            }
            for i, e in enumerate(events)
        ]
        if not only_if_wanted:
            endpoints = self._endpoints(conn, tenant)
        if not endpoints:
            lean.insert_rows(conn, "outbox_events", _EVENT_COLUMNS, rows)
            return 0
        seqs = (
            conn.execute(
                insert(outbox_events).returning(outbox_events.c.seq, sort_by_parameter_order=True),
                rows,
            )
            .scalars()
            .all()
        )
        deliveries = [
            {
                "tenant_id": tenant,
                "event_seq": seq,
                "endpoint_id": endpoint_id,
                "order_key": row["order_key"],
                "status": "pending",
                "attempts": 0,
                "due_us": now_us,
                "queued_us": now_us,
            }
            for row, seq in zip(rows, seqs, strict=True)
            for endpoint_id, kind, types in endpoints
            if rules.wants(kind, types, row["event_type"], row["to_cmp"])
        ]
        if deliveries:
            conn.execute(insert(outbox_deliveries), deliveries)
        return len(deliveries)

    def subject_erased(
        self, conn: Connection, tenant: str, hashed_ids: Sequence[str], now_us: int
    ) -> int:
        """Record the erasure notice for a subject's ``hashed_ids`` in the erasure's
        transaction, under a fresh random order key; return the deliveries queued. With no
        active endpoint subscribed, nothing is stored: an undeliverable notice would only keep
        the hashed ids."""
        if not hashed_ids:
            return 0
        notice = subject_erased(sorted(hashed_ids), "e:" + secrets.token_hex(16))
        return self.record(conn, tenant, [notice], now_us, only_if_wanted=True)

    @staticmethod
    def _endpoints(conn: Connection, tenant: str) -> list[tuple[str, str, frozenset[str]]]:
        # Lean statements (consentgate.storage.lean) for what every ingest commit runs.
        return [
            (endpoint_id, kind, frozenset(types.split(",")))
            for endpoint_id, kind, types in lean.rows(conn, _ACTIVE_ENDPOINTS, {"t": tenant})
        ]


def purge_notices(conn: Connection, event_seqs: Iterable[int]) -> int:
    """Replace the body of each ``subject.erased`` event among ``event_seqs`` whose
    deliveries are all finished (delivered or dead) with a purged marker; return how many.
    Runs in the transaction that finished the last delivery. The events are locked first
    (PostgreSQL), so two relays finishing a notice's last two deliveries at once cannot each
    see the other's as still pending: the second waits, then sees the first's outcome."""
    seqs = sorted(set(event_seqs))
    if not seqs:
        return 0
    e, d = outbox_events, outbox_deliveries
    query = select(e.c.seq, e.c.created_us).where(
        e.c.seq.in_(seqs), e.c.event_type == SUBJECT_ERASED
    )
    if conn.dialect.name == "postgresql":
        query = query.order_by(e.c.seq).with_for_update()
    locked = conn.execute(query).all()
    if not locked:
        return 0
    open_ = set(
        conn.execute(
            select(d.c.event_seq)
            .where(d.c.event_seq.in_([r.seq for r in locked]), d.c.status == PENDING)
            .distinct()
        ).scalars()
    )
    done = [r for r in locked if r.seq not in open_]
    for r in done:
        conn.execute(
            update(e)
            .where(e.c.seq == r.seq)
            .values(body=purged(SUBJECT_ERASED, format_rfc3339(from_micros(r.created_us))))
        )
    return len(done)


def erase_subject(
    conn: Connection, tenant: str, subject_ref: str, hashed_ids: Iterable[str] = ()
) -> int:
    """Delete every outbox event of the subject (and its deliveries, whatever their state);
    return how many events went. ``hashed_ids``: the subject's keyed hashes, to also remove
    decisions on messages sent to the number before it was a subject (keyed ``h:<hash>``)."""
    keys = [subject_ref, *(f"h:{h}" for h in hashed_ids)]
    theirs = select(outbox_events.c.seq).where(
        outbox_events.c.tenant_id == tenant, outbox_events.c.order_key.in_(keys)
    )
    conn.execute(delete(outbox_deliveries).where(outbox_deliveries.c.event_seq.in_(theirs)))
    removed = conn.execute(
        delete(outbox_events).where(
            outbox_events.c.tenant_id == tenant, outbox_events.c.order_key.in_(keys)
        )
    ).rowcount
    return int(removed or 0)
