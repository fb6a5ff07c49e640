"""CMP integrations: adapter mappings, CMP receipt keys, webhook replay memory.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cmp_settings",
        sa.Column("tenant_id", sa.String(63), sa.ForeignKey("tenants.id"), primary_key=True),
        sa.Column("jwks", sa.Text, nullable=True),
        sa.Column("require_signed_receipts", sa.Boolean, nullable=False),
        sa.Column("updated_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "cmp_mappings",
        sa.Column("tenant_id", sa.String(63), sa.ForeignKey("tenants.id"), primary_key=True),
        sa.Column("adapter", sa.String(16), primary_key=True),
        sa.Column("mapping", sa.Text, nullable=False),
        sa.Column("updated_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "webhook_receipts",
        sa.Column("tenant_id", sa.String(63), sa.ForeignKey("tenants.id"), primary_key=True),
        sa.Column("webhook_id", sa.String(200), primary_key=True),
        sa.Column("status_code", sa.SmallInteger, nullable=False),
        sa.Column("response", sa.Text, nullable=False),
        sa.Column("received_us", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("webhook_receipts")
    op.drop_table("cmp_mappings")
    op.drop_table("cmp_settings")
