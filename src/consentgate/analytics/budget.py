"""Storage of a tenant's analytics settings and its monthly privacy budget.

A charge is one conditional ``UPDATE … SET spent = spent + ε WHERE spent + ε ≤ limit`` on the
month's row, in the same transaction that records the query. Two queries racing for the last
of the budget cannot both pass: on PostgreSQL the second UPDATE waits for the first's row lock
and re-checks its condition against the committed total (READ COMMITTED re-evaluates the WHERE
of a locked row); on SQLite write transactions start with ``BEGIN IMMEDIATE`` and run one at a
time. A refused charge raises, which rolls the transaction back: nothing charged, nothing
recorded.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from sqlalchemy import Connection, Engine, select, update
from sqlalchemy.dialects import postgresql, sqlite

from consentgate.analytics.rules import (
    DEFAULT_SETTINGS,
    MICRO,
    AnalyticsSettings,
    can_charge,
)
from consentgate.errors import BudgetExhausted
from consentgate.storage.engine import read_tx, write_tx
from consentgate.storage.tables import analytics_budget, analytics_queries, analytics_settings


def insert_ignore(conn: Connection, table: Any, rows: list[dict[str, Any]]) -> int:
    """Insert rows, skipping those whose primary key exists; the number inserted."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    key = next(iter(table.primary_key.columns))
    inserted = 0
    # Counted through RETURNING: psycopg reports no rowcount for a multi-row VALUES insert.
    for start in range(0, len(rows), 500):
        stmt = (
            dialect.insert(table)
            .values(rows[start : start + 500])
            .on_conflict_do_nothing()
            .returning(key)
        )
        inserted += len(conn.execute(stmt).all())
    return inserted


class BudgetStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def settings(self, conn: Connection, tenant: str) -> AnalyticsSettings:
        row = conn.execute(
            select(
                analytics_settings.c.k_threshold,
                analytics_settings.c.monthly_epsilon_micro,
                analytics_settings.c.require_dp,
            ).where(analytics_settings.c.tenant_id == tenant)
        ).one_or_none()
        if row is None:
            return DEFAULT_SETTINGS
        return AnalyticsSettings(
            int(row.k_threshold), int(row.monthly_epsilon_micro), bool(row.require_dp)
        )

    def put_settings(self, tenant: str, settings: AnalyticsSettings, now_us: int) -> None:
        values = {
            "k_threshold": settings.k_threshold,
            "monthly_epsilon_micro": settings.monthly_epsilon_micro,
            "require_dp": settings.require_dp,
            "updated_us": now_us,
        }
        with write_tx(self._engine) as conn:
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            stmt = dialect.insert(analytics_settings).values(tenant_id=tenant, **values)
            conn.execute(stmt.on_conflict_do_update(index_elements=["tenant_id"], set_=values))

    def spent_micro(self, conn: Connection, tenant: str, month: str) -> int:
        spent = conn.execute(
            select(analytics_budget.c.spent_micro).where(
                analytics_budget.c.tenant_id == tenant, analytics_budget.c.month == month
            )
        ).scalar()
        return 0 if spent is None else int(spent)

    def usage(self, tenant: str, month: str) -> tuple[AnalyticsSettings, int]:
        with read_tx(self._engine) as conn:
            return self.settings(conn, tenant), self.spent_micro(conn, tenant, month)

    def charge(
        self,
        tenant: str,
        month: str,
        charge_micro: int,
        kind: str,
        query: dict[str, Any],
        now_us: int,
    ) -> int:
        """Charge ``charge_micro`` to the month and record the query, atomically; the month's
        total spent afterwards. Raises :class:`BudgetExhausted` (nothing written) when the
        month's limit, read in the same transaction, cannot pay."""
        with write_tx(self._engine) as conn:
            limit = self.settings(conn, tenant).monthly_epsilon_micro
            insert_ignore(
                conn, analytics_budget, [{"tenant_id": tenant, "month": month, "spent_micro": 0}]
            )
            spent = self.spent_micro(conn, tenant, month)
            if not can_charge(spent, charge_micro, limit):
                raise exhausted(spent, charge_micro, limit)
            charged = conn.execute(
                update(analytics_budget)
                .where(
                    analytics_budget.c.tenant_id == tenant,
                    analytics_budget.c.month == month,
                    analytics_budget.c.spent_micro + charge_micro <= limit,
                )
                .values(spent_micro=analytics_budget.c.spent_micro + charge_micro)
            ).rowcount
            if charged != 1:  # another transaction spent it between our read and our update
                raise exhausted(self.spent_micro(conn, tenant, month), charge_micro, limit)
            conn.execute(
                analytics_queries.insert().values(
                    id=str(uuid.uuid4()),
                    tenant_id=tenant,
                    month=month,
                    kind=kind,
                    epsilon_micro=charge_micro,
                    query=json.dumps(query, sort_keys=True, separators=(",", ":")),
                    created_us=now_us,
                )
            )
            return self.spent_micro(conn, tenant, month)


def exhausted(spent: int, charge: int, limit: int) -> BudgetExhausted:
    remaining = max(0, limit - spent)
    return BudgetExhausted(
        f"this query costs epsilon {charge / MICRO:g} but only {remaining / MICRO:g} of this "
        "month's privacy budget remains; nothing was charged",
        extra={"epsilon_requested": charge / MICRO, "epsilon_remaining": remaining / MICRO},
    )
