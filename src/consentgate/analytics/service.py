"""The analytics service: aggregates with k-suppression, DP answers paid from a monthly
budget, join-token exports, conversions and attribution.

The order of a differentially private answer is fixed: validate → compute the true counts →
charge the budget and record the query in one transaction → add noise → answer. A query the
budget cannot pay for fails before anything is released; a failure after the charge wastes
budget but never releases an unpaid answer.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine

from consentgate.analytics import attribution as attr
from consentgate.analytics.budget import BudgetStore, exhausted
from consentgate.analytics.engagement import (
    Counts,
    Key,
    campaign_ids,
    check_campaign,
    engagement_counts,
    template_ids,
)
from consentgate.analytics.noise import MECHANISM, LaplacePlan, plan_laplace
from consentgate.analytics.rules import (
    ATTRIBUTION_SENSITIVITY,
    MAX_CELLS,
    METRICS,
    MICRO,
    AnalyticsSettings,
    Dimension,
    can_charge,
    cell_count,
    check_max_per_subject,
    check_query_epsilon,
    check_tokens,
    day_label,
    days_in,
    engagement_sensitivity,
    epsilon_micro,
    month_of,
    parse_group_by,
    parse_month,
    suppressed,
    validate_settings,
)
from consentgate.crypto.keystore import KeyStore
from consentgate.delivery.planner import DeliveryMode
from consentgate.domain.clock import Clock
from consentgate.domain.timeutil import parse_rfc3339, to_micros
from consentgate.errors import InvalidInput
from consentgate.storage.engine import read_tx, write_tx
from consentgate.tenants.service import TenantService

MAX_CONVERSIONS = 10_000


class AnalyticsService:
    def __init__(
        self, engine: Engine, tenants: TenantService, keystore: KeyStore, clock: Clock
    ) -> None:
        self._engine = engine
        self._tenants = tenants
        self._keys = keystore
        self._clock = clock
        self._budget = BudgetStore(engine)

    # -- settings ------------------------------------------------------------------------------

    def settings(self, tenant: str) -> dict[str, Any]:
        month = month_of(self._clock.now())
        settings, spent = self._budget.usage(tenant, month)
        return _settings_view(settings, month, spent)

    def put_settings(
        self, tenant: str, k_threshold: int, monthly_epsilon: float, require_dp: bool
    ) -> dict[str, Any]:
        settings = validate_settings(k_threshold, monthly_epsilon, require_dp)
        self._budget.put_settings(tenant, settings, to_micros(self._clock.now()))
        return self.settings(tenant)

    # -- engagement ----------------------------------------------------------------------------

    def engagement(
        self,
        tenant: str,
        *,
        campaign_id: str | None = None,
        group_by: str | None = None,
        from_: str | None = None,
        to: str | None = None,
        dp_epsilon: float | None = None,
        max_per_subject: int | None = None,
    ) -> dict[str, Any]:
        dims = parse_group_by(group_by)
        from_us = None if from_ is None else to_micros(parse_rfc3339(from_, field="from"))
        to_us = None if to is None else to_micros(parse_rfc3339(to, field="to"))
        if from_us is not None and to_us is not None and to_us <= from_us:
            raise InvalidInput("to must be later than from", field="to")
        month = month_of(self._clock.now())
        settings, spent = self._budget.usage(tenant, month)
        _check_dp_request(settings, dp_epsilon, max_per_subject)
        answer: dict[str, Any] = {
            "campaign_id": campaign_id,
            "group_by": [d.value for d in dims],
            "from": from_,
            "to": to,
            "k_threshold": settings.k_threshold,
        }
        if dp_epsilon is None:
            with read_tx(self._engine) as conn:
                if campaign_id is not None:
                    check_campaign(conn, tenant, campaign_id)
                counts = engagement_counts(
                    conn,
                    tenant,
                    dims,
                    campaign_id=campaign_id,
                    from_us=from_us,
                    to_us=to_us,
                    max_per_subject=None,
                )
            rows = [
                _row(dims, key, c.as_tuple(), settings.k_threshold)
                for key, c in sorted(counts.items(), key=lambda kv: _sort_key(kv[0]))
            ]
            return {**answer, "rows": rows, "dp": None}

        bound = check_max_per_subject(1 if max_per_subject is None else max_per_subject)
        plan = plan_laplace(check_query_epsilon(dp_epsilon), engagement_sensitivity(bound))
        charge = _affordable(settings, spent, plan)
        with read_tx(self._engine) as conn:
            domains = self._domains(conn, tenant, dims, campaign_id, from_us, to_us)
            counts = engagement_counts(
                conn,
                tenant,
                dims,
                campaign_id=campaign_id,
                from_us=from_us,
                to_us=to_us,
                max_per_subject=bound,
            )
        cells = list(itertools.product(*domains))
        # One vector: every metric of every cell, so one measurement covers the answer.
        vector = [_count(counts.get(cell), m) for m in range(len(METRICS)) for cell in cells]
        query = {
            "campaign_id": campaign_id,
            "group_by": answer["group_by"],
            "from": from_,
            "to": to,
            "max_per_subject": bound,
            "epsilon": dp_epsilon,
        }
        spent = self._budget.charge(
            tenant, month, charge, "engagement", query, to_micros(self._clock.now())
        )
        noisy = plan.release(vector)
        n = len(cells)
        rows = [
            _row(
                dims,
                cell,
                tuple(noisy[m * n + i] for m in range(len(METRICS))),
                settings.k_threshold,
            )
            for i, cell in enumerate(cells)
        ]
        return {
            **answer,
            "rows": rows,
            "dp": _dp_view(plan, charge, settings, month, spent, max_per_subject=bound),
        }

    def _domains(
        self,
        conn: Any,
        tenant: str,
        dims: Sequence[Dimension],
        campaign_id: str | None,
        from_us: int | None,
        to_us: int | None,
    ) -> list[list[Any]]:
        """Every value each grouped dimension can take, read without looking at anyone's
        data: days of the window, the delivery modes, the tenant's purposes, templates and
        campaigns. A DP answer covers all their combinations, empty ones included."""
        campaign = None if campaign_id is None else check_campaign(conn, tenant, campaign_id)
        domains: list[list[Any]] = []
        for dim in dims:
            if dim is Dimension.DAY:
                if from_us is None or to_us is None:
                    raise InvalidInput(
                        "grouping by day with dp_epsilon needs from and to: the days reported "
                        "are fixed by the query, not by the data",
                        field="from",
                    )
                domains.append(days_in(from_us, to_us))
            elif dim is Dimension.MODE:
                domains.append([m.value for m in DeliveryMode])
            elif dim is Dimension.CONSENT_TYPE:
                domains.append(
                    [campaign[1]] if campaign else sorted(self._tenants.catalogue(tenant))
                )
            elif dim is Dimension.TEMPLATE_ID:
                domains.append([campaign[0]] if campaign else template_ids(conn, tenant))
            else:
                domains.append([campaign_id] if campaign else [*campaign_ids(conn, tenant), None])
        if cell_count(domains) > MAX_CELLS:
            raise InvalidInput(
                f"a DP answer may cover at most {MAX_CELLS} groups; narrow group_by or the window",
                field="group_by",
            )
        return domains

    # -- join tokens, conversions, attribution -------------------------------------------------

    def join_tokens(
        self, tenant: str, month: str | None, campaign_id: str | None
    ) -> dict[str, Any]:
        month = parse_month(month, self._clock.now())
        if not campaign_id:
            raise InvalidInput("campaign_id is required", field="campaign_id")
        with read_tx(self._engine) as conn:
            check_campaign(conn, tenant, campaign_id)
            k = self._budget.settings(conn, tenant).k_threshold
            hashed = attr.send_hashed_ids(conn, tenant, campaign_id, month)
        base = {"month": month, "campaign_id": campaign_id, "k_threshold": k}
        if suppressed(len(hashed), k):
            return {**base, "suppressed": True, "count": None, "tokens": None}
        tokens = attr.join_tokens(self._keys, tenant, month, hashed)
        return {**base, "suppressed": False, "count": len(tokens), "tokens": tokens}

    def record_conversions(
        self, tenant: str, month: str, tokens: Sequence[object]
    ) -> dict[str, Any]:
        month = parse_month(month, self._clock.now())
        if not 1 <= len(tokens) <= MAX_CONVERSIONS:
            raise InvalidInput(f"give 1 to {MAX_CONVERSIONS} tokens", field="tokens")
        unique = check_tokens(tokens)
        with write_tx(self._engine) as conn:
            recorded = attr.record_conversions(
                conn, tenant, month, unique, to_micros(self._clock.now())
            )
        return {
            "month": month,
            "received": len(tokens),
            "recorded": recorded,
            "duplicates": len(tokens) - recorded,
        }

    def attribution(
        self,
        tenant: str,
        campaign_id: str | None,
        month: str | None = None,
        dp_epsilon: float | None = None,
    ) -> dict[str, Any]:
        if not campaign_id:
            raise InvalidInput("campaign_id is required", field="campaign_id")
        now = self._clock.now()
        wanted = None if month is None else parse_month(month, now)
        budget_month = month_of(now)
        settings, spent = self._budget.usage(tenant, budget_month)
        _check_dp_request(settings, dp_epsilon, None)
        plan: LaplacePlan | None = None
        charge = 0
        if dp_epsilon is not None:
            if wanted is None:
                raise InvalidInput(
                    "attribution with dp_epsilon needs month (the months reported must not "
                    "depend on the data)",
                    field="month",
                )
            plan = plan_laplace(check_query_epsilon(dp_epsilon), ATTRIBUTION_SENSITIVITY)
            charge = _affordable(settings, spent, plan)
        with read_tx(self._engine) as conn:
            check_campaign(conn, tenant, campaign_id)
            months = [wanted] if wanted else attr.campaign_months(conn, tenant, campaign_id)
            per_month = []
            for m in months:
                hashed = attr.send_hashed_ids(conn, tenant, campaign_id, m)
                tokens = attr.join_tokens(self._keys, tenant, m, hashed)
                per_month.append(
                    (m, len(tokens), attr.matched_conversions(conn, tenant, m, tokens))
                )
        k = settings.k_threshold
        answer: dict[str, Any] = {"campaign_id": campaign_id, "k_threshold": k, "dp": None}
        if plan is not None:
            query = {"campaign_id": campaign_id, "month": wanted, "epsilon": dp_epsilon}
            spent = self._budget.charge(
                tenant, budget_month, charge, "attribution", query, to_micros(now)
            )
            m, subjects, converted = per_month[0]
            subjects, converted = plan.release([subjects, converted])
            per_month = [(m, subjects, converted)]
            answer["dp"] = _dp_view(plan, charge, settings, budget_month, spent)
        answer["rows"] = [
            {"month": m, "suppressed": True, "subjects": None, "conversions": None}
            if suppressed(converted, k)
            else {"month": m, "suppressed": False, "subjects": subjects, "conversions": converted}
            for m, subjects, converted in per_month
        ]
        return answer


# -- shaping -----------------------------------------------------------------------------------


def _check_dp_request(
    settings: AnalyticsSettings, dp_epsilon: float | None, max_per_subject: int | None
) -> None:
    if dp_epsilon is None and settings.require_dp:
        raise InvalidInput(
            "this tenant answers analytics only with differential privacy: give dp_epsilon",
            field="dp_epsilon",
        )
    if dp_epsilon is None and max_per_subject is not None:
        raise InvalidInput("max_per_subject applies only with dp_epsilon", field="max_per_subject")


def _affordable(settings: AnalyticsSettings, spent: int, plan: LaplacePlan) -> int:
    """The charge for ``plan`` in micro-epsilon, refused early when it cannot be paid (the
    authoritative check is the charge's own transaction)."""
    charge = epsilon_micro(plan.epsilon)
    if not can_charge(spent, charge, settings.monthly_epsilon_micro):
        raise exhausted(spent, charge, settings.monthly_epsilon_micro)
    return charge


def _count(counts: Counts | None, metric: int) -> int:
    return 0 if counts is None else counts.as_tuple()[metric]


def _sort_key(key: Key) -> tuple[Any, ...]:
    return tuple((v is None, v if v is not None else "") for v in key)


def _row(dims: Sequence[Dimension], key: Key, values: Sequence[int], k: int) -> dict[str, Any]:
    row: dict[str, Any] = {
        d.value: day_label(v) if d is Dimension.DAY else v for d, v in zip(dims, key, strict=True)
    }
    hidden = suppressed(values[0], k)
    row["suppressed"] = hidden
    for name, value in zip(METRICS, values, strict=True):
        row[name] = None if hidden else int(value)
    return row


def _settings_view(settings: AnalyticsSettings, month: str, spent: int) -> dict[str, Any]:
    return {
        "k_threshold": settings.k_threshold,
        "monthly_epsilon": settings.monthly_epsilon,
        "require_dp": settings.require_dp,
        "budget": _budget_view(settings, month, spent),
    }


def _budget_view(settings: AnalyticsSettings, month: str, spent: int) -> dict[str, Any]:
    return {
        "month": month,
        "spent": spent / MICRO,
        "remaining": max(0, settings.monthly_epsilon_micro - spent) / MICRO,
    }


def _dp_view(
    plan: LaplacePlan,
    charge: int,
    settings: AnalyticsSettings,
    month: str,
    spent: int,
    *,
    max_per_subject: int | None = None,
) -> dict[str, Any]:
    view: dict[str, Any] = {
        "mechanism": MECHANISM,
        "epsilon": charge / MICRO,
        "scale": plan.scale,
        "l1_sensitivity": plan.l1_sensitivity,
        "suppression": "on noisy subject counts" if max_per_subject else "on noisy conversions",
        "budget": _budget_view(settings, month, spent),
    }
    if max_per_subject is not None:
        view["max_per_subject"] = max_per_subject
    return view
