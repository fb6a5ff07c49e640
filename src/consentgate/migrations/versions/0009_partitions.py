"""Partition the ledger, send and delivery-event tables on PostgreSQL (a no-op on SQLite).

Which key each table uses, and why (PostgreSQL requires every unique key of a partitioned
table to include its partition key):

* ``ledger_entries``, ``ledger_nodes``, ``checkpoints``: ``HASH(tenant_id)``, 8 partitions.
  Every read of them is per tenant (proofs, entries, history, verify, the latest checkpoint),
  so a query prunes to one partition, and all their unique keys already lead with
  ``tenant_id``: ``(tenant_id, seq)``, ``(tenant_id, consent_id)``, ``(tenant_id, level,
  idx)``, ``(tenant_id, tree_size)`` keep their meaning exactly. A ledger is never cut by
  time: it is append-only and every proof reaches back to leaf 0.
* ``messages`` (send decisions): ``HASH(tenant_id)``, 8 partitions. Its idempotency key
  ``(tenant_id, idempotency_key)`` must stay unique for ever (a retried send must never go
  out twice); ranged by month it would have to include the month and would only be unique
  within one. Its primary key becomes ``(tenant_id, id)`` (ids are random UUIDs; 0010
  puts ``id`` first, for lookups by id alone).
* ``message_events`` (delivery receipts, reads, failures): ``RANGE(at_us)`` by calendar
  month (UTC) plus a ``message_events_default`` partition, so retention's time cuts fall on
  whole partitions. Primary key ``(id, at_us)``; its foreign key to ``messages`` becomes
  ``(tenant_id, message_id)``, since the referenced unique key must include the tenant.
* ``outbox_events`` stays one table: its deliveries reference it by ``seq`` with ON DELETE
  CASCADE and the relay reads it by ``seq``; ranged by month, ``seq`` would stop being a key
  on its own. It is a queue that retention keeps short.

Month partitions: this migration makes one for every month from the oldest event's (at most
ten years back: the longest retention) to the next two after this one. Later months are made
ahead of time by ``consentgate.storage.partitions.ensure_month_partitions``, which checkpoint
workers (``consentgate worker --kind checkpoint``, ``all``, and ``serve``'s in-process workers)
call at start and every ten minutes, and ``consentgate partitions ensure`` on demand. An event
outside every month partition lands in the default partition and is moved out when its month
is made.

The conversion is in place, in this migration's transaction: rename the table, create the
partitioned one with the same columns, copy the rows, drop the old table (its append-only
triggers refuse UPDATE, DELETE and TRUNCATE, not DROP), then recreate the primary key,
unique constraints, foreign keys, indexes and the append-only triggers under their old names.
No table involved owns a sequence. The copy holds an exclusive lock on the tables, so a large
install runs it in a maintenance window (docs/operations.md).

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27
"""

from __future__ import annotations

import time
from typing import NamedTuple

from alembic import op

from consentgate.storage import partitions

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

APPEND_ONLY = ("ledger_entries", "ledger_nodes", "checkpoints")
_MAX_RETENTION_US = 3650 * 86_400 * 1_000_000  # retention settings allow at most 3650 days


class _Shape(NamedTuple):
    """What a table carries besides its columns, recreated after the copy (a NamedTuple:
    Alembic loads this file outside the module system, where dataclasses cannot resolve)."""

    primary_key: str
    uniques: tuple[tuple[str, str], ...] = ()
    foreign_keys: tuple[tuple[str, str], ...] = ()
    indexes: tuple[tuple[str, str], ...] = ()


_TENANT_FK = ("{t}_tenant_id_fkey", "FOREIGN KEY (tenant_id) REFERENCES tenants(id)")

# The schema after this migration (partitioned); the plain shapes used by downgrade differ
# only in the keys named in the module docstring.
_PARTITIONED = {
    "ledger_entries": _Shape(
        "tenant_id, seq",
        uniques=(("uq_ledger_consent_id", "tenant_id, consent_id"),),
        foreign_keys=(_TENANT_FK,),
        indexes=(("ix_ledger_subject", "tenant_id, subject_ref, seq"),),
    ),
    "ledger_nodes": _Shape("tenant_id, level, idx", foreign_keys=(_TENANT_FK,)),
    "checkpoints": _Shape("tenant_id, tree_size", foreign_keys=(_TENANT_FK,)),
    "messages": _Shape(
        "tenant_id, id",
        uniques=(("uq_messages_idempotency", "tenant_id, idempotency_key"),),
        foreign_keys=(_TENANT_FK,),
        indexes=(
            ("ix_messages_provider_id", "provider, provider_message_id"),
            ("ix_messages_tenant_time", "tenant_id, created_us"),
            ("ix_messages_subject", "tenant_id, subject_ref"),
        ),
    ),
    "message_events": _Shape(
        "id, at_us",
        foreign_keys=(
            _TENANT_FK,
            (
                "{t}_message_id_fkey",
                "FOREIGN KEY (tenant_id, message_id) REFERENCES messages(tenant_id, id)",
            ),
        ),
        indexes=(
            ("ix_message_events_message", "message_id"),
            ("ix_message_events_time", "tenant_id, at_us"),
        ),
    ),
}
_PLAIN = {
    **_PARTITIONED,
    "messages": _Shape(
        "id",
        uniques=_PARTITIONED["messages"].uniques,
        foreign_keys=_PARTITIONED["messages"].foreign_keys,
        indexes=_PARTITIONED["messages"].indexes,
    ),
    "message_events": _Shape(
        "id",
        foreign_keys=(
            _TENANT_FK,
            ("{t}_message_id_fkey", "FOREIGN KEY (message_id) REFERENCES messages(id)"),
        ),
        indexes=_PARTITIONED["message_events"].indexes,
    ),
}
# messages before message_events: the events' foreign key needs messages' new key.
_ORDER = ("ledger_entries", "ledger_nodes", "checkpoints", "messages", "message_events")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    _detach_events_from_messages()
    for table in _ORDER:
        if table in partitions.MONTH_TABLES:
            column = partitions.MONTH_TABLES[table]
            _rebuild(table, f"PARTITION BY RANGE ({column})", _month_children(table, column))
        else:
            _rebuild(table, "PARTITION BY HASH (tenant_id)", _hash_children(table))
    for table in _ORDER:
        _finish(table, _PARTITIONED[table])


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    _detach_events_from_messages()
    for table in _ORDER:
        _rebuild(table, "", [])
    for table in _ORDER:
        _finish(table, _PLAIN[table])


def _detach_events_from_messages() -> None:
    op.execute(
        "ALTER TABLE message_events DROP CONSTRAINT IF EXISTS message_events_message_id_fkey"
    )


def _hash_children(table: str) -> list[str]:
    n = partitions.HASH_MODULUS
    return [
        f'CREATE TABLE "{table}_h{r}" PARTITION OF "{table}" '
        f"FOR VALUES WITH (MODULUS {n}, REMAINDER {r})"
        for r in range(n)
    ]


def _month_children(table: str, column: str) -> list[str]:
    bind = op.get_bind()
    lo = bind.exec_driver_sql(f'SELECT min({column}) FROM "{table}"').scalar()  # noqa: S608
    now_us = int(time.time() * 1_000_000)
    months = set(partitions.months_to_ensure(now_us))
    if lo is not None:  # every month from the oldest event on, without gaps
        # Instants come from providers' callbacks: a wild one (1970, 9999) must not make
        # thousands of partitions. Events older than the longest retention (3650 days), or
        # past the months made ahead, stay in the default partition.
        oldest = max(int(lo), now_us - _MAX_RETENTION_US)
        months.update(partitions.months_between(min(oldest, now_us), now_us))
    made = [f'CREATE TABLE "{table}_default" PARTITION OF "{table}" DEFAULT']
    for month in sorted(months):
        low, high = month.bounds_us()
        made.append(
            f'CREATE TABLE "{month.partition(table)}" PARTITION OF "{table}" '
            f"FOR VALUES FROM ({low}) TO ({high})"
        )
    return made


def _rebuild(table: str, partition_by: str, children: list[str]) -> None:
    """Replace ``table`` by a new one (partitioned per ``partition_by``, or plain when it is
    empty) holding the same rows; keys, indexes and triggers come back in :func:`_finish`."""
    old = f"{table}_pre0009"
    op.execute(f'ALTER TABLE "{table}" RENAME TO "{old}"')
    op.execute(f'CREATE TABLE "{table}" (LIKE "{old}" INCLUDING DEFAULTS) {partition_by}')
    for statement in children:
        op.execute(statement)
    op.execute(f'INSERT INTO "{table}" SELECT * FROM "{old}"')  # noqa: S608
    op.execute(f'DROP TABLE "{old}"')


def _finish(table: str, shape: _Shape) -> None:
    op.execute(
        f'ALTER TABLE "{table}" ADD CONSTRAINT "{table}_pkey" PRIMARY KEY ({shape.primary_key})'
    )
    for name, cols in shape.uniques:
        op.execute(f'ALTER TABLE "{table}" ADD CONSTRAINT "{name}" UNIQUE ({cols})')
    for name, clause in shape.foreign_keys:
        op.execute(f'ALTER TABLE "{table}" ADD CONSTRAINT "{name.format(t=table)}" {clause}')
    for name, cols in shape.indexes:
        op.execute(f'CREATE INDEX "{name}" ON "{table}" ({cols})')
    if table in APPEND_ONLY:
        # Row triggers on a partitioned table are cloned onto every partition (PostgreSQL 13+);
        # TRUNCATE triggers are not, so each partition gets its own.
        op.execute(
            f'CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON "{table}" '
            "FOR EACH ROW EXECUTE FUNCTION consentgate_append_only()"
        )
        bind = op.get_bind()
        names = partitions.children(bind, table) if partitions.is_partitioned(bind, table) else []
        for name in [table, *names]:
            op.execute(
                f'CREATE TRIGGER {name}_no_truncate BEFORE TRUNCATE ON "{name}" '
                "FOR EACH STATEMENT EXECUTE FUNCTION consentgate_append_only()"
            )
