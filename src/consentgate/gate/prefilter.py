"""The campaign pre-filter's two plans, chosen by size the way a query planner would.

Both read, in one statement, ``(hashed_id, status, event_seq, expires_us)`` of the tenant's
subject links joined to their consent state for one purpose; neither asks anything per
recipient. They differ in which side is moved:

- ``temp_table`` moves the audience to the database: its hashed ids are bulk-loaded into a
  temporary table (multi-row ``INSERT`` on SQLite, ``COPY`` on PostgreSQL) and joined there,
  so only matching rows come back. Cost grows with the audience: right for an audience that
  is small beside the tenant (a segment of a large base).
- ``stream`` moves the tenant's state to the caller: the join of the tenant's links and
  states, streamed in partitions, probed against the audience held in a dict (a hash join in
  memory). Cost grows with the tenant: right when the audience is a large share of it, where
  loading a million ids costs more than reading every row once.

:func:`choose` compares the two with the tenant's link count (one index range count) and
per-row costs measured by the benchmark; audiences below :data:`SMALL` skip the count. The
caller judges the rows, so both plans give the same decisions by construction (a test
holds them to that on both engines).
"""

from __future__ import annotations

import contextlib
import gc
import uuid
from collections.abc import Collection, Iterator
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.exc import SQLAlchemyError

SMALL = 5_000  # audiences up to this size take the temp table without counting the tenant
# Relative per-row costs (bench/prefilter.py, both engines within ~2x of each other):
# loading and probing one audience id vs streaming and probing one tenant row.
TEMP_TABLE_COST = 3.0
STREAM_COST = 1.0
_PARTITION = 20_000  # rows taken from the cursor at a time
_INSERT_ROWS = 500  # ids per multi-row INSERT (SQLite)
_SQLITE_CACHE_KIB = 256 * 1024  # page cache while streaming (pages are allocated as read)

_TENANT_STATE = text(
    "SELECT l.hashed_id, s.status, s.event_seq, s.expires_us FROM subject_links l "
    "JOIN consent_state s ON s.tenant_id = l.tenant_id AND s.subject_ref = l.subject_ref "
    "AND s.consent_type = :p WHERE l.tenant_id = :t"
)
_LINK_COUNT = text("SELECT count(*) FROM subject_links WHERE tenant_id = :t")

Row = tuple[str, str, int, int | None]
"""(hashed_id, status, event_seq, expires_us) of one linked subject with state."""


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Automatic garbage collection off while a pre-filter makes its rows and decisions:
    hundreds of thousands of new container objects trigger full collections that walk
    every object of the process, and took ~3/4 of the time spent making decisions (seen
    in the benchmark). Reference counting still frees everything; nothing here makes
    cycles."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class Plan(StrEnum):
    STREAM = "stream"
    TEMP_TABLE = "temp_table"


def choose(conn: Connection, tenant: str, audience: int) -> Plan:
    """The cheaper plan for an audience of ``audience`` distinct ids."""
    if audience <= SMALL:
        return Plan.TEMP_TABLE
    links = int(conn.execute(_LINK_COUNT, {"t": tenant}).scalar_one())
    return Plan.STREAM if links * STREAM_COST <= audience * TEMP_TABLE_COST else Plan.TEMP_TABLE


def rows(
    conn: Connection, tenant: str, purpose: str, audience: Collection[str], plan: Plan | None
) -> Iterator[Row]:
    """The state rows the plan reads (``plan`` None: :func:`choose`). Streamed rows may name
    ids outside the audience; the caller probes them. Consume inside the transaction."""
    if plan is None:
        plan = choose(conn, tenant, len(audience))
    if plan is Plan.STREAM:
        return _stream(conn, tenant, purpose)
    return iter(_temp_table(conn, tenant, purpose, audience))


def _stream(conn: Connection, tenant: str, purpose: str) -> Iterator[Row]:
    """The tenant's rows in partitions. On SQLite the cursor steps through the join as rows
    are taken. On PostgreSQL the result comes in one transfer (its size is the tenant's,
    which this plan is only chosen for when comparable to the audience held in memory
    anyway): a server-side cursor would be planned for a fast start — a merge join over two
    index scans — and took twice as long as the hash join planned for the whole result."""
    sqlite = conn.dialect.name == "sqlite"
    if sqlite:
        # The join reads the tenant's links and states in index order, their rows in
        # random order: with SQLite's default 2 MiB page cache nearly every row is a read
        # from the OS. A cache sized for a tenant, for this statement only.
        before = int(conn.exec_driver_sql("PRAGMA cache_size").scalar_one())
        conn.exec_driver_sql(f"PRAGMA cache_size = -{_SQLITE_CACHE_KIB}")
    try:
        result = conn.execute(_TENANT_STATE, {"t": tenant, "p": purpose})
        for partition in result.partitions(_PARTITION):
            yield from partition
    finally:
        if sqlite:
            with contextlib.suppress(SQLAlchemyError):  # a broken connection is discarded
                conn.exec_driver_sql(f"PRAGMA cache_size = {before}")


def _temp_table(
    conn: Connection, tenant: str, purpose: str, audience: Collection[str]
) -> list[Row]:
    table = f"audience_{uuid.uuid4().hex[:12]}"
    conn.execute(text(f"CREATE TEMPORARY TABLE {table} (hashed_id VARCHAR(64) NOT NULL)"))
    if conn.dialect.name == "postgresql":
        _copy(conn, table, audience)
    else:
        _insert(conn, table, list(audience))
    # CROSS JOIN: SQLite then keeps this order (each audience id probes the links' and the
    # states' primary keys; its planner has no statistics for the temporary table and may
    # otherwise scan it once per link); PostgreSQL plans it like any inner join.
    found = conn.execute(
        text(
            "SELECT l.hashed_id, s.status, s.event_seq, s.expires_us "  # noqa: S608
            f"FROM {table} a CROSS JOIN subject_links l CROSS JOIN consent_state s "
            "WHERE l.tenant_id = :t AND l.hashed_id = a.hashed_id "
            "AND s.tenant_id = l.tenant_id AND s.subject_ref = l.subject_ref "
            "AND s.consent_type = :p"
        ),
        {"t": tenant, "p": purpose},
    )
    out: list[Row] = [tuple(r) for r in found]
    conn.execute(text(f"DROP TABLE {table}"))
    return out


def _copy(conn: Connection, table: str, audience: Collection[str]) -> None:
    """PostgreSQL: COPY through the driver (psycopg escapes each value)."""
    driver: Any = conn.connection.driver_connection
    with driver.cursor() as cursor, cursor.copy(f"COPY {table} (hashed_id) FROM STDIN") as copy:
        for hashed_id in audience:
            copy.write_row((hashed_id,))


def _insert(conn: Connection, table: str, ids: list[str]) -> None:
    """SQLite: multi-row INSERTs of bound values (one statement per few hundred ids)."""
    for start in range(0, len(ids), _INSERT_ROWS):
        chunk = tuple(ids[start : start + _INSERT_ROWS])
        values = ",".join(["(?)"] * len(chunk))
        conn.exec_driver_sql(f"INSERT INTO {table} (hashed_id) VALUES {values}", chunk)  # noqa: S608
