"""Delivery: devices and their app keys, templates, messages (decisions) and their events.

No column holds a raw phone number: people are ``subject_ref``s. (What a queued retry must
know of a number belongs to the dispatch queue, encrypted per message; not in this revision.)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant_id", sa.String(63), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("subject_ref", sa.String(36), nullable=False),
        sa.Column("rcs", sa.Boolean, nullable=False),
        sa.Column("native_e2ee", sa.Boolean, nullable=False),
        sa.Column("key_kid", sa.String(200), nullable=True),
        sa.Column("key_suite", sa.String(64), nullable=True),
        sa.Column("public_key", sa.LargeBinary, nullable=True),
        sa.Column("expires_us", sa.BigInteger, nullable=True),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.Column("updated_us", sa.BigInteger, nullable=False),
        sa.Column("revoked_us", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_devices_subject", "devices", ["tenant_id", "subject_ref"])
    op.create_table(
        "templates",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant_id", sa.String(63), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("rich_card", sa.Text, nullable=True),
        sa.Column("sensitive", sa.Boolean, nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "messages",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant_id", sa.String(63), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=False),
        sa.Column("request_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("subject_ref", sa.String(36), nullable=True),
        sa.Column("consent_type", sa.String(64), nullable=False),
        sa.Column("template_id", sa.String(36), nullable=False),
        sa.Column("campaign_id", sa.String(36), nullable=True),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("mode", sa.String(32), nullable=True),
        sa.Column("reason", sa.String(32), nullable=True),
        sa.Column("device_kid", sa.String(200), nullable=True),
        sa.Column("consent_seq", sa.BigInteger, nullable=True),
        sa.Column("provider", sa.String(32), nullable=True),
        sa.Column("provider_message_id", sa.String(200), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.Column("updated_us", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("tenant_id", "idempotency_key", name="uq_messages_idempotency"),
    )
    op.create_index("ix_messages_provider_id", "messages", ["provider", "provider_message_id"])
    op.create_index("ix_messages_tenant_time", "messages", ["tenant_id", "created_us"])
    op.create_table(
        "message_events",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant_id", sa.String(63), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("message_id", sa.String(36), sa.ForeignKey("messages.id"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("at_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_message_events_message", "message_events", ["message_id"])


def downgrade() -> None:
    op.drop_table("message_events")
    op.drop_table("messages")
    op.drop_table("templates")
    op.drop_table("devices")
