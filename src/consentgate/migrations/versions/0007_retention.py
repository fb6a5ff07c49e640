"""Retention settings per tenant, the erasure log, and what erasure and retention look rows up by.

* ``retention_settings``: how long delivery events, send decisions and outbox bookkeeping are
  kept (a tenant without a row gets the documented defaults).
* ``erasures``: which random ``subject_ref``s were erased, and by which ledger leaf. Nothing in
  it is personal (the refs are random and already in the ledger); ``retention run`` uses it to
  scrub a send that was in flight while its subject was erased.
* Indexes for erasure (messages and queued recipients of one subject) and for deleting by age
  in bounded batches (delivery events, CMP webhook answers).
* ``campaign_recipients.hashed_id`` becomes nullable: erasure clears it.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "retention_settings",
        sa.Column("tenant_id", sa.String(63), sa.ForeignKey("tenants.id"), primary_key=True),
        sa.Column("delivery_events_days", sa.Integer, nullable=False),
        sa.Column("send_decisions_days", sa.Integer, nullable=False),
        sa.Column("outbox_days", sa.Integer, nullable=False),
        sa.Column("updated_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "erasures",
        sa.Column("tenant_id", sa.String(63), sa.ForeignKey("tenants.id"), primary_key=True),
        sa.Column("subject_ref", sa.String(36), primary_key=True),
        sa.Column("ledger_seq", sa.BigInteger, nullable=False),
        sa.Column("erased_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_messages_subject", "messages", ["tenant_id", "subject_ref"])
    op.create_index("ix_message_events_time", "message_events", ["tenant_id", "at_us"])
    op.create_index("ix_webhook_receipts_time", "webhook_receipts", ["tenant_id", "received_us"])
    with op.batch_alter_table("campaign_recipients") as batch:
        batch.alter_column("hashed_id", existing_type=sa.String(64), nullable=True)
    op.create_index("ix_recipients_hashed", "campaign_recipients", ["tenant_id", "hashed_id"])


def downgrade() -> None:
    op.drop_index("ix_recipients_hashed", table_name="campaign_recipients")
    with op.batch_alter_table("campaign_recipients") as batch:
        batch.alter_column("hashed_id", existing_type=sa.String(64), nullable=False)
    op.drop_index("ix_webhook_receipts_time", table_name="webhook_receipts")
    op.drop_index("ix_message_events_time", table_name="message_events")
    op.drop_index("ix_messages_subject", table_name="messages")
    op.drop_table("erasures")
    op.drop_table("retention_settings")
