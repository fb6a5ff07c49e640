"""Partitioned ``messages``: primary key ``(id, tenant_id)`` instead of ``(tenant_id, id)``.

0009 had to add the partition key ``tenant_id`` to the primary key of the hash-partitioned
``messages`` table and put it first. But delivery finds and updates a message by its id alone
in several places (provider callbacks, settling a send, revocation, retention), and an index
whose leading column is ``tenant_id`` cannot serve ``WHERE id = ?``: PostgreSQL scanned each
partition's whole key index. With ``id`` leading, such a lookup is one index probe per
partition. The foreign key from ``message_events`` is recreated against the new key. SQLite,
and a PostgreSQL ``messages`` that is not partitioned, keep their plain ``id`` key: nothing to do.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-27
"""

from __future__ import annotations

from alembic import op

from consentgate.storage import partitions

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_FK = "message_events_message_id_fkey"


def _rekey(columns: str, referencing: str) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql" or not partitions.is_partitioned(bind, "messages"):
        return
    op.execute(f"ALTER TABLE message_events DROP CONSTRAINT IF EXISTS {_FK}")
    op.execute("ALTER TABLE messages DROP CONSTRAINT messages_pkey")
    op.execute(f"ALTER TABLE messages ADD CONSTRAINT messages_pkey PRIMARY KEY ({columns})")
    op.execute(
        f"ALTER TABLE message_events ADD CONSTRAINT {_FK} "
        f"FOREIGN KEY ({referencing}) REFERENCES messages({columns})"
    )


def upgrade() -> None:
    _rekey("id, tenant_id", "message_id, tenant_id")


def downgrade() -> None:
    _rekey("tenant_id, id", "tenant_id, message_id")
