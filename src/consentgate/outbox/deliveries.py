"""Reading deliveries (paged, newest first) and replaying one.

A replay puts a delivered or dead delivery back in the queue under the same ``webhook-id``
(receivers de-duplicate on it), with a fresh retry budget counted from the replay. It keeps its
place in its subject's order: a replayed older event holds back that subject's later pending
events for the endpoint until it is delivered or dead again. An erasure notice whose body was
purged (every delivery finished) cannot be replayed: 409.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, Engine, Select, select, update

from consentgate.domain.clock import Clock
from consentgate.domain.timeutil import format_rfc3339, from_micros, to_micros
from consentgate.errors import Conflict, InvalidInput, NotFound
from consentgate.outbox import rules
from consentgate.outbox.events import SUBJECT_ERASED, is_purged
from consentgate.storage.engine import read_tx, write_tx
from consentgate.storage.tables import crm_endpoints, outbox_deliveries, outbox_events

STATUSES = ("pending", "delivered", "dead")
MAX_PAGE = 500

d, e = outbox_deliveries, outbox_events


def _at(us: int | None) -> str | None:
    return None if us is None else format_rfc3339(from_micros(us))


def _query() -> Select[Any]:
    return select(
        d.c.id,
        d.c.endpoint_id,
        d.c.status,
        d.c.attempts,
        d.c.due_us,
        d.c.claim,
        d.c.queued_us,
        d.c.last_attempt_us,
        d.c.delivered_us,
        d.c.last_status,
        d.c.last_error,
        e.c.event_id,
        e.c.event_type,
        e.c.body,
        e.c.created_us,
    ).join(e, e.c.seq == d.c.event_seq)


def _view(row: Any) -> dict[str, Any]:
    return {
        "delivery_id": int(row.id),
        "webhook_id": rules.webhook_id(row.event_id, row.endpoint_id),
        "endpoint_id": row.endpoint_id,
        "event_type": row.event_type,
        "status": row.status,
        "attempts": int(row.attempts),
        "created_at": _at(row.created_us),
        "queued_at": _at(row.queued_us),
        "next_attempt_at": _at(row.due_us) if row.status == "pending" else None,
        "last_attempt_at": _at(row.last_attempt_us),
        "delivered_at": _at(row.delivered_us),
        "last_status_code": row.last_status,
        "last_error": row.last_error,
        "event": json.loads(row.body),
    }


def _delivery_id(raw: str) -> int:
    """Path ids are integers; anything else names no delivery (404, like another tenant's)."""
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise NotFound("no delivery with this id")
    return int(raw)


class DeliveryService:
    def __init__(self, engine: Engine, clock: Clock) -> None:
        self._engine = engine
        self._clock = clock

    def list(
        self,
        tenant: str,
        *,
        status: str | None = None,
        endpoint_id: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """A page of deliveries, newest first; ``next_cursor`` fetches the next page."""
        if status is not None and status not in STATUSES:
            raise InvalidInput(f"status must be one of {', '.join(STATUSES)}", field="status")
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInput(f"limit must be 1-{MAX_PAGE}", field="limit")
        query = _query().where(d.c.tenant_id == tenant)
        if cursor is not None:
            if not cursor.isascii() or not cursor.isdigit() or len(cursor) > 18:
                raise InvalidInput("cursor is not one this service returned", field="cursor")
            query = query.where(d.c.id < int(cursor))
        if status is not None:
            query = query.where(d.c.status == status)
        if endpoint_id is not None:
            query = query.where(d.c.endpoint_id == endpoint_id)
        with read_tx(self._engine) as conn:
            rows = conn.execute(query.order_by(d.c.id.desc()).limit(limit)).all()
        return {
            "deliveries": [_view(r) for r in rows],
            "next_cursor": str(rows[-1].id) if len(rows) == limit else None,
        }

    def get(self, tenant: str, delivery_id: str) -> dict[str, Any]:
        ident = _delivery_id(delivery_id)
        with read_tx(self._engine) as conn:
            row = conn.execute(
                _query().where(d.c.tenant_id == tenant, d.c.id == ident)
            ).one_or_none()
        if row is None:
            raise NotFound("no delivery with this id")
        return _view(row)

    def replay(self, tenant: str, delivery_id: str) -> dict[str, Any]:
        """Queue a delivered or dead delivery again (a pending one is left as it is)."""
        ident = _delivery_id(delivery_id)
        now = to_micros(self._clock.now())
        with write_tx(self._engine) as conn:
            row = conn.execute(
                select(d.c.status, d.c.event_seq, crm_endpoints.c.active)
                .join(crm_endpoints, crm_endpoints.c.id == d.c.endpoint_id)
                .where(d.c.tenant_id == tenant, d.c.id == ident)
            ).one_or_none()
            if row is None:
                raise NotFound("no delivery with this id")
            if not row.active:
                raise Conflict("the endpoint is disabled: register it again to receive events")
            self._check_not_purged(conn, int(row.event_seq))
            if row.status != "pending":
                conn.execute(
                    update(d)
                    .where(d.c.id == ident)
                    .values(
                        status="pending",
                        attempts=0,
                        due_us=now,
                        queued_us=now,
                        claim=None,
                        delivered_us=None,
                    )
                )
            found = conn.execute(_query().where(d.c.id == ident)).one()
        return _view(found)

    @staticmethod
    def _check_not_purged(conn: Connection, event_seq: int) -> None:
        """Conflict if the event is an erasure notice already purged. The event is locked
        (PostgreSQL) so a relay finishing its last other delivery either sees this replay
        pending (and keeps the body) or purged it first (and this replay is refused)."""
        query = select(e.c.event_type, e.c.body).where(e.c.seq == event_seq)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        event = conn.execute(query).one()
        if event.event_type == SUBJECT_ERASED and is_purged(event.body):
            raise Conflict(
                "this erasure notice was purged once every delivery of it was finished: "
                "the erased subject's hashed ids are no longer stored"
            )
