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
query early, so a page runs it over consecutive ``subject_ref`` ranges, each bounded by a
count of ledger rows found with an index-only scan of ``ix_ledger_subject``: a page costs the
same wherever it starts. A whole answer (CSV) is one statement read from a server-side
cursor: one sequential pass, constant memory in Python.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
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


_SAFE_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")


def _ledger_order(conn: Connection) -> str:
    """How a whole answer reads the tenant's rows. SQLite would walk ``ix_ledger_subject``
    for the partition order and fetch every row out of order; reading them in ledger order
    through the primary key (an index SQLite names itself) and sorting is about twice as
    fast (seen in the bench: 0.75 s against 0.44 s for 200,000 events). PostgreSQL plans it
    well by itself."""
    if conn.dialect.name != "sqlite":
        return ""
    for row in conn.exec_driver_sql("PRAGMA index_list(ledger_entries)"):
        if row[3] == "pk" and _SAFE_NAME.match(str(row[1])):
            return f' INDEXED BY "{row[1]}"'
    return ""


@lru_cache(maxsize=64)
def _winners_sql(
    dialect: str, known_at: bool, bounded: bool, status: str | None, source: str = ""
) -> TextClause:
    """The per-subject winner. ``consent_id`` is compared by code point, as Python compares
    it in the live rule: SQLite's default BINARY collation of UTF-8 does that; PostgreSQL is
    told to (``COLLATE "C"``) whatever the database's collation.

    An erasure ends the subject: the subject's erasure leaf (once it happened and was known)
    rides in the same scan, sorts after every decision, and a window flag (``gone``) drops
    the whole partition — one sort, where a NOT EXISTS probe per subject cost twice the
    query on PostgreSQL."""
    collate = ' COLLATE "C"' if dialect == "postgresql" else ""
    filters = ["e.tenant_id = :t", "e.ts_us <= :as_of", "e.subject_ref > :after"]
    filters.append(
        "((e.consent_type = :ct AND e.status IN (:g, :w)) "
        "OR (e.consent_type = :every AND e.status = :erased))"
    )
    if known_at:
        filters.append("e.received_us <= :known_at")
    if bounded:
        filters.append("e.subject_ref <= :upto")
    outer = ["w.rn = 1", "w.gone = 0"]
    if status:
        outer.append("w.status = :status")
    # Only fixed fragments are interpolated; every value is bound.
    return text(
        "SELECT w.subject_ref, w.status, w.ts_us, w.seq, w.consent_id, "  # noqa: S608
        "(SELECT l.hashed_id FROM subject_links l WHERE l.tenant_id = :t "
        "AND l.subject_ref = w.subject_ref ORDER BY l.salt_version DESC, l.hashed_id "
        "LIMIT 1) AS hashed_id "
        "FROM (SELECT e.subject_ref, e.status, e.ts_us, e.seq, e.consent_id, "
        "ROW_NUMBER() OVER (PARTITION BY e.subject_ref ORDER BY "
        "CASE WHEN e.status = :erased THEN 1 ELSE 0 END, e.ts_us DESC, "
        "CASE WHEN e.status = :w THEN 0 ELSE 1 END, "
        f"e.consent_id{collate} DESC) AS rn, "
        "MAX(CASE WHEN e.status = :erased THEN 1 ELSE 0 END) "
        "OVER (PARTITION BY e.subject_ref) AS gone "
        f"FROM ledger_entries e{source} WHERE {' AND '.join(filters)}) w "
        f"WHERE {' AND '.join(outer)} ORDER BY w.subject_ref"
    )


def states(
    conn: Connection, tenant: str, query: AsOfQuery, after: str = "", *, whole: bool = False
) -> Iterator[SubjectState]:
    """Every subject's state for ``query`` in ``subject_ref`` order, starting after
    ``after`` (a cursor; ``""`` is before every subject). ``whole``: the caller reads to the
    end (a CSV download), so one statement, streamed from a server-side cursor, beats
    bounded ranges (one sequential pass instead of index-ordered row fetches)."""
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
    dialect, known = conn.dialect.name, query.known_at_us is not None
    if whole:
        rows = conn.execute(
            _winners_sql(dialect, known, False, sql_status, _ledger_order(conn)),
            {**params, "after": after},
            execution_options={"stream_results": True, "yield_per": RANGE_ROWS},
        )
        yield from _views(rows, query, as_of)
        return
    while True:
        upto = conn.execute(_BOUND, {"t": tenant, "after": after, "span": RANGE_ROWS}).scalar()
        sql = _winners_sql(dialect, known, upto is not None, sql_status)
        yield from _views(
            conn.execute(sql, {**params, "after": after, "upto": upto}).all(), query, as_of
        )
        if upto is None:
            return
        after = str(upto)


def _views(rows: Iterable[Any], query: AsOfQuery, as_of: datetime) -> Iterator[SubjectState]:
    """The winners as readers see them at ``as_of`` (expiry applied), filtered."""
    statuses = {s.value: s for s in ConsentStatus}
    view, admits, max_age = rules.view, query.status.admits, query.max_age
    for ref, status, ts_us, seq, consent_id, hashed_id in rows:
        seen = view(
            StateEntry(statuses[status], from_micros(ts_us), seq, consent_id), max_age, as_of
        )
        if admits(seen.status):
            yield SubjectState(ref, hashed_id, seen.status, seen.effective_at, seen.event_seq)
