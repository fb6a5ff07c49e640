"""Analytics: tenant analytics settings, privacy-budget charges, conversions.

Epsilon is stored in integer micro-units (``*_micro``) so a budget adds up exactly on both
engines (ten charges of 0.1 must make 1.0, not 0.9999999999999999). ``analytics_queries``
records every differentially private answer (its parameters and epsilon, never its values),
written in the same transaction that charges ``analytics_budget``.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "analytics_settings",
        sa.Column("tenant_id", sa.String(63), sa.ForeignKey("tenants.id"), primary_key=True),
        sa.Column("k_threshold", sa.Integer, nullable=False),
        sa.Column("monthly_epsilon_micro", sa.BigInteger, nullable=False),
        sa.Column("require_dp", sa.Boolean, nullable=False),
        sa.Column("updated_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "analytics_budget",
        sa.Column("tenant_id", sa.String(63), sa.ForeignKey("tenants.id"), primary_key=True),
        sa.Column("month", sa.String(7), primary_key=True),
        sa.Column("spent_micro", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "analytics_queries",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant_id", sa.String(63), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("month", sa.String(7), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("epsilon_micro", sa.BigInteger, nullable=False),
        sa.Column("query", sa.Text, nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_analytics_queries_month", "analytics_queries", ["tenant_id", "month"])
    op.create_table(
        "analytics_conversions",
        sa.Column("tenant_id", sa.String(63), sa.ForeignKey("tenants.id"), primary_key=True),
        sa.Column("month", sa.String(7), primary_key=True),
        sa.Column("token", sa.String(43), primary_key=True),
        sa.Column("created_us", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("analytics_conversions")
    op.drop_index("ix_analytics_queries_month", table_name="analytics_queries")
    op.drop_table("analytics_queries")
    op.drop_table("analytics_budget")
    op.drop_table("analytics_settings")
