"""Transactional outbox, CRM/CMP webhook endpoints and their deliveries.

``outbox_events`` holds each outward event once (its JSON body, the key that orders it: the
subject's random ``subject_ref``); ``outbox_deliveries`` one row per (event, endpoint), the
unit the relay claims, retries and gives up on. The two indexes the relay works through are
partial (pending deliveries only), so they stay small however much history accumulates.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_SERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_PENDING = sa.text("status = 'pending'")


def upgrade() -> None:
    op.create_table(
        "crm_endpoints",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("tenant_id", sa.String(63), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("event_types", sa.String(400), nullable=False),
        sa.Column("secret_wrapped", sa.LargeBinary, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.Column("disabled_us", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_crm_endpoints_tenant", "crm_endpoints", ["tenant_id", "active"])
    op.create_table(
        "outbox_events",
        sa.Column("seq", _SERIAL, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.String(63), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("event_id", sa.String(32), nullable=False),
        sa.Column("event_type", sa.String(32), nullable=False),
        sa.Column("order_key", sa.String(80), nullable=False),
        sa.Column("to_cmp", sa.Boolean, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_outbox_events_order_key", "outbox_events", ["tenant_id", "order_key"])
    op.create_index("ix_outbox_events_time", "outbox_events", ["tenant_id", "created_us"])
    op.create_table(
        "outbox_deliveries",
        sa.Column("id", _SERIAL, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.String(63), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column(
            "event_seq",
            sa.BigInteger,
            sa.ForeignKey("outbox_events.seq", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("endpoint_id", sa.String(32), sa.ForeignKey("crm_endpoints.id"), nullable=False),
        sa.Column("order_key", sa.String(80), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("due_us", sa.BigInteger, nullable=False),
        sa.Column("claim", sa.String(32), nullable=True),
        sa.Column("queued_us", sa.BigInteger, nullable=False),
        sa.Column("last_attempt_us", sa.BigInteger, nullable=True),
        sa.Column("delivered_us", sa.BigInteger, nullable=True),
        sa.Column("last_status", sa.SmallInteger, nullable=True),
        sa.Column("last_error", sa.String(64), nullable=True),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_outbox_deliveries_due",
        "outbox_deliveries",
        ["due_us"],
        sqlite_where=_PENDING,
        postgresql_where=_PENDING,
    )
    op.create_index(
        "ix_outbox_deliveries_order",
        "outbox_deliveries",
        ["endpoint_id", "order_key", "event_seq"],
        sqlite_where=_PENDING,
        postgresql_where=_PENDING,
    )
    op.create_index("ix_outbox_deliveries_list", "outbox_deliveries", ["tenant_id", "status", "id"])
    op.create_index("ix_outbox_deliveries_event", "outbox_deliveries", ["event_seq"])


def downgrade() -> None:
    op.drop_table("outbox_deliveries")
    op.drop_table("outbox_events")
    op.drop_table("crm_endpoints")
