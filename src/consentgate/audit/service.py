"""The audit reports as a service: parameters checked at the edge, then pages or streams.

Instants arrive as RFC 3339 text and are rejected with the offending field named; a page is
read in one read transaction; a stream (CSV) holds one read transaction while it is
consumed, so the rows of one report come from one consistent view of the store.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from typing import Any

from sqlalchemy import Engine

from consentgate.audit import cursor, pointintime, sends
from consentgate.audit.pointintime import AsOfQuery, StatusFilter, SubjectState
from consentgate.audit.sends import Send
from consentgate.domain.timeutil import format_rfc3339, from_micros, parse_rfc3339, to_micros
from consentgate.errors import InvalidInput
from consentgate.storage.engine import read_tx
from consentgate.tenants.service import TenantService

MAX_LIMIT = 10_000


def instant(value: str, field: str) -> int:
    return to_micros(parse_rfc3339(value, field=field))


def _at(micros: int) -> str:
    return format_rfc3339(from_micros(micros))


def check_limit(limit: int | None) -> None:
    if limit is not None and not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be 1-{MAX_LIMIT}", field="limit")


class AuditService:
    def __init__(self, engine: Engine, tenants: TenantService) -> None:
        self._engine = engine
        self._tenants = tenants

    # -- who was consented at an instant --------------------------------------------------
    def as_of_query(
        self,
        tenant: str,
        *,
        as_of: str,
        consent_type: str,
        known_at: str | None = None,
        status: str = "granted",
    ) -> AsOfQuery:
        as_of_us = instant(as_of, "as_of")
        known_us = None if known_at is None else instant(known_at, "known_at")
        purpose = self._tenants.catalogue(tenant).get(consent_type)
        if purpose is None:
            raise InvalidInput("unknown consent_type", field="consent_type")
        try:
            wanted = StatusFilter(status)
        except ValueError:
            allowed = ", ".join(s.value for s in StatusFilter)
            raise InvalidInput(f"status must be one of {allowed}", field="status") from None
        return AsOfQuery(consent_type, as_of_us, known_us, wanted, purpose.max_age)

    def consents_page(
        self, tenant: str, query: AsOfQuery, after: str | None, limit: int
    ) -> dict[str, Any]:
        check_limit(limit)
        start = cursor.parse_subject_cursor(after)
        with read_tx(self._engine) as conn:
            page = list(islice(pointintime.states(conn, tenant, query, start), limit))
        return {
            "as_of": format_rfc3339(from_micros(query.as_of_us)),
            "known_at": None
            if query.known_at_us is None
            else format_rfc3339(from_micros(query.known_at_us)),
            "consent_type": query.consent_type,
            "status": query.status.value,
            "subjects": [s.as_dict() for s in page],
            "next_cursor": cursor.subject_cursor(page[-1].subject_ref)
            if len(page) == limit
            else None,
        }

    def consents_stream(
        self, tenant: str, query: AsOfQuery, after: str | None, limit: int | None
    ) -> Iterator[SubjectState]:
        check_limit(limit)
        start = cursor.parse_subject_cursor(after)  # checked now, before streaming starts

        def stream() -> Iterator[SubjectState]:
            with read_tx(self._engine) as conn:
                states = pointintime.states(conn, tenant, query, start, whole=limit is None)
                yield from islice(states, limit)

        return stream()

    # -- sends and fallbacks ------------------------------------------------------------
    @staticmethod
    def time_range(from_: str, to: str) -> tuple[int, int]:
        from_us, to_us = instant(from_, "from"), instant(to, "to")
        if to_us < from_us:
            raise InvalidInput("to must not be before from", field="to")
        return from_us, to_us

    def sends_page(
        self,
        tenant: str,
        span: tuple[int, int],
        after: str | None,
        limit: int,
        *,
        fallbacks_only: bool = False,
    ) -> dict[str, Any]:
        check_limit(limit)
        start = cursor.parse_send_cursor(after)
        with read_tx(self._engine) as conn:
            page = list(
                sends.sends(
                    conn,
                    tenant,
                    *span,
                    after=start,
                    limit=limit,
                    fallbacks_only=fallbacks_only,
                )
            )
            totals = None if fallbacks_only else sends.counts(conn, tenant, *span)
        next_cursor = (
            cursor.send_cursor(page[-1].at_us, page[-1].message_id) if len(page) == limit else None
        )
        bounds = {
            "from": format_rfc3339(from_micros(span[0])),
            "to": format_rfc3339(from_micros(span[1])),
        }
        if fallbacks_only:
            items = [s.as_fallback() for s in page]
            return {**bounds, "fallbacks": items, "next_cursor": next_cursor}
        assert totals is not None
        items = [s.as_dict() for s in page]
        return {**bounds, **totals, "sends": items, "next_cursor": next_cursor}

    def sends_stream(
        self,
        tenant: str,
        span: tuple[int, int],
        after: str | None,
        limit: int | None,
        *,
        fallbacks_only: bool = False,
    ) -> Iterator[Send]:
        check_limit(limit)
        start = cursor.parse_send_cursor(after)

        def stream() -> Iterator[Send]:
            with read_tx(self._engine) as conn:
                yield from sends.sends(
                    conn, tenant, *span, after=start, limit=limit, fallbacks_only=fallbacks_only
                )

        return stream()
