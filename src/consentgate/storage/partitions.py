"""PostgreSQL table partitioning: the scheme, and month partitions made ahead of time.

Migration 0009 partitions the big tables on PostgreSQL (SQLite keeps plain tables):

* ``ledger_entries``, ``ledger_nodes``, ``checkpoints`` and ``messages``: ``HASH(tenant_id)``
  in :data:`HASH_MODULUS` partitions. Every read and write of them names the tenant, so the
  planner prunes to one partition, and every unique key keeps its meaning because each
  already starts with ``tenant_id`` (PostgreSQL requires unique keys to include the
  partition key). ``messages`` is not split by month: its idempotency key must stay unique
  for all time, and a month-partitioned unique key would have to include the month.
* ``message_events`` (delivery receipts, reads, failures): ``RANGE(at_us)`` by calendar month
  (UTC), plus a default partition for anything outside the months made. Retention deletes
  by time, so old months are whole partitions; its primary key becomes ``(id, at_us)``.

Month partitions are made ahead of time by :func:`ensure_month_partitions` (the checkpoint
worker calls it every pass; ``consentgate partitions ensure`` too). If rows for a month
already sit in the default partition (nobody ensured in time), they are moved into the new
month partition in the same transaction, so ensuring is always safe to run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection

from consentgate.domain.timeutil import to_micros

HASH_MODULUS = 8
HASH_TABLES = ("ledger_entries", "ledger_nodes", "checkpoints", "messages")
MONTH_TABLES = {"message_events": "at_us"}  # table → the instant column it is ranged on
MONTHS_AHEAD = 2
_ENSURE_LOCK = 7242209  # advisory lock key: one ensurer at a time across processes


@dataclass(frozen=True, slots=True, order=True)
class Month:
    year: int
    month: int

    @classmethod
    def of_micros(cls, us: int) -> Month:
        at = datetime.fromtimestamp(us / 1_000_000, tz=UTC)
        return cls(at.year, at.month)

    def next(self) -> Month:
        return Month(self.year + self.month // 12, self.month % 12 + 1)

    def bounds_us(self) -> tuple[int, int]:
        """[first microsecond of the month, first microsecond of the next), UTC."""
        following = self.next()
        return (
            to_micros(datetime(self.year, self.month, 1, tzinfo=UTC)),
            to_micros(datetime(following.year, following.month, 1, tzinfo=UTC)),
        )

    def partition(self, table: str) -> str:
        return f"{table}_p{self.year:04d}{self.month:02d}"


def months_to_ensure(now_us: int, ahead: int = MONTHS_AHEAD) -> list[Month]:
    """This month and ``ahead`` more (pure)."""
    month = Month.of_micros(now_us)
    wanted = [month]
    for _ in range(ahead):
        month = month.next()
        wanted.append(month)
    return wanted


def months_between(first_us: int, last_us: int) -> list[Month]:
    """Every month from the one holding ``first_us`` to the one holding ``last_us`` (pure)."""
    month, last = Month.of_micros(first_us), Month.of_micros(last_us)
    found = []
    while month <= last:
        found.append(month)
        month = month.next()
    return found


def is_partitioned(conn: Connection, table: str) -> bool:
    if conn.dialect.name != "postgresql":
        return False
    return bool(
        conn.exec_driver_sql(
            "SELECT 1 FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid "
            "WHERE c.relname = %(t)s AND c.relnamespace = current_schema()::regnamespace",
            {"t": table},
        ).first()
    )


def children(conn: Connection, table: str) -> list[str]:
    """Names of ``table``'s partitions (none on SQLite or for a plain table)."""
    if conn.dialect.name != "postgresql":
        return []
    rows = conn.exec_driver_sql(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_class p ON p.oid = i.inhparent "
        "WHERE p.relname = %(t)s AND p.relnamespace = current_schema()::regnamespace "
        "ORDER BY c.relname",
        {"t": table},
    )
    return [str(r[0]) for r in rows]


def create_month_partition(conn: Connection, table: str, month: Month) -> bool:
    """Make ``month``'s partition of ``table`` unless it exists; True if it was made.

    Rows of that month already in the default partition are moved into it first (ATTACH
    would refuse while the default holds rows of the new range)."""
    name = month.partition(table)
    if name in children(conn, table):
        return False
    column = MONTH_TABLES[table]
    low, high = month.bounds_us()
    default = f"{table}_default"
    conn.exec_driver_sql(f'CREATE TABLE "{name}" (LIKE "{table}" INCLUDING DEFAULTS)')
    if default in children(conn, table):
        conn.exec_driver_sql(
            f'WITH moved AS (DELETE FROM "{default}" '  # noqa: S608 - names are ours
            f"WHERE {column} >= %(lo)s AND {column} < %(hi)s RETURNING *) "
            f'INSERT INTO "{name}" SELECT * FROM moved',
            {"lo": low, "hi": high},
        )
    conn.exec_driver_sql(
        f'ALTER TABLE "{table}" ATTACH PARTITION "{name}" FOR VALUES FROM ({low}) TO ({high})'
    )
    return True


def ensure_month_partitions(conn: Connection, now_us: int, ahead: int = MONTHS_AHEAD) -> list[str]:
    """Make the partitions of this month and the next ``ahead`` for every month-ranged table
    that is partitioned; return the names made. A no-op on SQLite and on an unpartitioned
    PostgreSQL table. Safe with several callers at once (one advisory lock serialises them)."""
    if conn.dialect.name != "postgresql":
        return []
    made: list[str] = []
    tables = [t for t in MONTH_TABLES if is_partitioned(conn, t)]
    if not tables:
        return made
    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_ENSURE_LOCK})")
    for table in tables:
        for month in months_to_ensure(now_us, ahead):
            if create_month_partition(conn, table, month):
                made.append(month.partition(table))
    return made
