"""Point-in-time consent: who was in which state at an instant, recomputed from the ledger.

The state view (``consent_state``) holds only the present; an auditor asks about the past
("who had granted marketing on 1 March?") and, bitemporally, about what the service knew
then (``known_at``: only events received by that instant). The answer is the live rule of
:mod:`consentgate.domain.consent` replayed over the ledger events with ``ts_us <= as_of``:
per subject the latest timestamp wins, ``withdrawn`` wins a tie, then the greater
``consent_id``; :func:`consentgate.domain.consent.view` then turns a grant older than the
purpose's maximum age into ``expired`` at ``as_of``. An erasure leaf is not a consent
decision: from the erasure's instant on (once known) the subject has no state at all; before
it, the subject is listed with ``hashed_id`` None, its links being gone.

The winner is chosen in SQL, set-based, with ``ROW_NUMBER() OVER (PARTITION BY subject_ref
ORDER BY ...) = 1`` (the same text on SQLite and PostgreSQL). Neither engine can stop a window
query early, so it runs over consecutive ``subject_ref`` ranges, each bounded by a count of
ledger rows found with an index-only scan of ``ix_ledger_subject``: a page costs the same
wherever it starts, a full pass reads every event once, and memory holds one range.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, TextClause, text

from consentgate.domain import consent as rules
from consentgate.domain.consent import ConsentStatus, EffectiveStatus, StateEntry
from consentgate.domain.timeutil import format_rfc3339, from_micros

#: Ledger rows per range. Large enough that the per-statement overhead vanishes, small enough
#: that a range sorts in memory and a short page does not read much past what it returns.
RANGE_ROWS = 10_000

#: The erasure leaf (see the erasure rule in :mod:`consentgate.domain.consent`).
ERASED, ALL_PURPOSES = "erased", "*"


class StatusFilter(StrEnum):
    GRANTED = "granted"
    WITHDRAWN = "withdrawn"
    EXPIRED = "expired"
    ALL = "all"

    def admits(self, status: EffectiveStatus) -> bool:
        return self is StatusFilter.ALL or self.value == status.value


@dataclass(frozen=True, slots=True)
class AsOfQuery:
    consent_type: str
    as_of_us: int
    known_at_us: int | None
    status: StatusFilter
    max_age: timedelta | None


@dataclass(frozen=True, slots=True)
class SubjectState:
    subject_ref: str
    hashed_id: str | None  # None once the subject's links were erased
    status: EffectiveStatus
    effective_at: datetime
    seq: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "hashed_id": self.hashed_id,
            "status": self.status.value,
            "effective_at": format_rfc3339(self.effective_at),
            "seq": self.seq,
        }


_BOUND = text(
    "SELECT subject_ref FROM ledger_entries WHERE tenant_id = :t AND subject_ref > :after "
    "ORDER BY subject_ref LIMIT 1 OFFSET :span"
)


@lru_cache(maxsize=64)
def _winners_sql(dialect: str, known_at: bool, bounded: bool, status: str | None) -> TextClause:
    """The per-subject winner in one range. ``consent_id`` is compared by code point, as
    Python compares it in the live rule: SQLite's default BINARY collation of UTF-8 does
    that; PostgreSQL is told to (``COLLATE "C"``) whatever the database's collation."""
    collate = ' COLLATE "C"' if dialect == "postgresql" else ""
    filters = ["e.tenant_id = :t", "e.consent_type = :ct", "e.status IN (:g, :w)"]
    filters += ["e.ts_us <= :as_of", "e.subject_ref > :after"]
    if known_at:
        filters.append("e.received_us <= :known_at")
    if bounded:
        filters.append("e.subject_ref <= :upto")
    erased = ["x.tenant_id = :t", "x.subject_ref = w.subject_ref", "x.status = :erased"]
    erased += ["x.consent_type = :every", "x.ts_us <= :as_of"]
    if known_at:
        erased.append("x.received_us <= :known_at")
    outer = ["w.rn = 1"]
    if status:
        outer.append("w.status = :status")
    # An erasure ends the subject: once it happened (and was known), it has no state.
    outer.append(f"NOT EXISTS (SELECT 1 FROM ledger_entries x WHERE {' AND '.join(erased)})")  # noqa: S608
    # Only fixed fragments are interpolated; every value is bound.
    return text(
        "SELECT w.subject_ref, w.status, w.ts_us, w.seq, w.consent_id, "  # noqa: S608
        "(SELECT l.hashed_id FROM subject_links l WHERE l.tenant_id = :t "
        "AND l.subject_ref = w.subject_ref ORDER BY l.salt_version DESC, l.hashed_id "
        "LIMIT 1) AS hashed_id "
        "FROM (SELECT e.subject_ref, e.status, e.ts_us, e.seq, e.consent_id, "
        "ROW_NUMBER() OVER (PARTITION BY e.subject_ref ORDER BY e.ts_us DESC, "
        "CASE WHEN e.status = :w THEN 0 ELSE 1 END, "
        f"e.consent_id{collate} DESC) AS rn "
        f"FROM ledger_entries e WHERE {' AND '.join(filters)}) w "
        f"WHERE {' AND '.join(outer)} ORDER BY w.subject_ref"
    )


def states(
    conn: Connection, tenant: str, query: AsOfQuery, after: str = ""
) -> Iterator[SubjectState]:
    """Every subject's state for ``query`` in ``subject_ref`` order, starting after
    ``after`` (a cursor; ``""`` is before every subject)."""
    as_of = from_micros(query.as_of_us)
    # SQL can drop rows whose winner cannot pass the filter; expiry is decided below.
    sql_status = {
        StatusFilter.GRANTED: ConsentStatus.GRANTED.value,
        StatusFilter.EXPIRED: ConsentStatus.GRANTED.value,
        StatusFilter.WITHDRAWN: ConsentStatus.WITHDRAWN.value,
    }.get(query.status)
    params: dict[str, Any] = {
        "t": tenant,
        "ct": query.consent_type,
        "g": ConsentStatus.GRANTED.value,
        "w": ConsentStatus.WITHDRAWN.value,
        "as_of": query.as_of_us,
        "known_at": query.known_at_us,
        "status": sql_status,
        "erased": ERASED,
        "every": ALL_PURPOSES,
    }
    dialect = conn.dialect.name
    while True:
        upto = conn.execute(_BOUND, {"t": tenant, "after": after, "span": RANGE_ROWS}).scalar()
        sql = _winners_sql(dialect, query.known_at_us is not None, upto is not None, sql_status)
        rows = conn.execute(sql, {**params, "after": after, "upto": upto}).all()
        for row in rows:
            entry = StateEntry(
                ConsentStatus(row.status), from_micros(row.ts_us), int(row.seq), row.consent_id
            )
            seen = rules.view(entry, query.max_age, as_of)
            if query.status.admits(seen.status):
                yield SubjectState(
                    row.subject_ref, row.hashed_id, seen.status, seen.effective_at, seen.event_seq
                )
        if upto is None:
            return
        after = str(upto)
