"""Revoking sent-but-undelivered messages when consent is withdrawn.

* ``revocable_messages``: a message a provider can still withdraw (RBM), with its number
  sealed (AES-256-GCM under a wrapped data key, as in the campaign queue) until it is
  delivered, revoked or a week old; ``state`` ``revoke`` queues the provider call.
* ``revocation_cursors``: the next ledger seq the revoker reads per tenant. Tenants that
  exist now start at their current tree size: withdrawals recorded before this migration
  revoke nothing (no message of theirs is revocable yet).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "revocable_messages",
        sa.Column("message_id", sa.String(36), primary_key=True),
        sa.Column("tenant_id", sa.String(63), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("subject_ref", sa.String(36), nullable=False),
        sa.Column("consent_type", sa.String(64), nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("provider_message_id", sa.String(200), nullable=False),
        sa.Column("context", sa.String(120), nullable=False),
        sa.Column("sealed", sa.LargeBinary, nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary, nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("due_us", sa.BigInteger, nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "ix_revocable_subject", "revocable_messages", ["tenant_id", "subject_ref", "consent_type"]
    )
    op.create_index("ix_revocable_due", "revocable_messages", ["state", "due_us"])
    op.create_table(
        "revocation_cursors",
        sa.Column("tenant_id", sa.String(63), sa.ForeignKey("tenants.id"), primary_key=True),
        sa.Column("next_seq", sa.BigInteger, nullable=False),
    )
    op.execute(
        "INSERT INTO revocation_cursors (tenant_id, next_seq) "
        "SELECT tenant_id, tree_size FROM ledger_heads"
    )


def downgrade() -> None:
    op.drop_table("revocation_cursors")
    op.drop_index("ix_revocable_due", "revocable_messages")
    op.drop_index("ix_revocable_subject", "revocable_messages")
    op.drop_table("revocable_messages")
