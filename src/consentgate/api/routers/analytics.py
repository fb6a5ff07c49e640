"""Analytics surface: aggregates only (k-suppressed, optionally differentially private),
the tenant's analytics settings and budget, join-token exports, conversions, attribution.

Reading needs ``analytics:read`` (or ``admin``); a DP query also spends the tenant's privacy
budget. Changing the settings needs ``admin``. No answer carries a row-level field: no
message id, subject reference, hashed id or timestamp of one send.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from consentgate.api.deps import get_app, json_body, parse, require
from consentgate.api.models import AnalyticsSettingsIn, ConversionsIn
from consentgate.api.openapi import request_body
from consentgate.tenants.service import Principal, Scope

router = APIRouter(prefix="/v1/analytics", tags=["analytics"])

Reader = Annotated[Principal, Depends(require(Scope.ANALYTICS_READ, Scope.ADMIN))]
Admin = Annotated[Principal, Depends(require(Scope.ADMIN))]
Epsilon = Annotated[
    float | None,
    Query(description="Add discrete Laplace noise at this epsilon and charge it to the budget"),
]


@router.get("/engagement")
def engagement(
    request: Request,
    principal: Reader,
    campaign_id: str | None = None,
    group_by: Annotated[
        str | None,
        Query(description="Comma-separated: day, mode, consent_type, template_id, campaign"),
    ] = None,
    from_: Annotated[str | None, Query(alias="from", description="RFC 3339, inclusive")] = None,
    to: Annotated[str | None, Query(description="RFC 3339, exclusive")] = None,
    dp_epsilon: Epsilon = None,
    max_per_subject: Annotated[
        int | None, Query(description="DP only: messages kept per subject (default 1)")
    ] = None,
) -> dict[str, Any]:
    """Sent, delivered and read counts (and distinct subjects) per group of sent messages.
    Groups with fewer than k subjects are `suppressed` with null counts. With `dp_epsilon`,
    every group of the requested dimensions is answered with noise, suppression is decided on
    the noisy subject count, and the epsilon is charged to this month's budget (429 if it
    cannot pay; nothing charged then)."""
    return get_app(request).analytics.engagement(
        principal.tenant,
        campaign_id=campaign_id or None,  # `campaign_id=` (empty) means every send
        group_by=group_by,
        from_=from_ or None,
        to=to or None,
        dp_epsilon=dp_epsilon,
        max_per_subject=max_per_subject,
    )


@router.get("/settings")
def get_settings(request: Request, principal: Reader) -> dict[str, Any]:
    """k threshold, monthly epsilon, whether DP is required, and this month's budget use."""
    return get_app(request).analytics.settings(principal.tenant)


@router.put("/settings", openapi_extra=request_body(AnalyticsSettingsIn))
async def put_settings(request: Request, principal: Admin) -> dict[str, Any]:
    """Set `k_threshold` (2-1000), `monthly_epsilon` (0-100) and optionally `require_dp`."""
    body = parse(AnalyticsSettingsIn, await json_body(request))
    return await run_in_threadpool(
        get_app(request).analytics.put_settings,
        principal.tenant,
        body.k_threshold,
        body.monthly_epsilon,
        body.require_dp,
    )


@router.get("/join-tokens")
def join_tokens(
    request: Request,
    principal: Reader,
    month: Annotated[str, Query(description="YYYY-MM")],
    campaign_id: str | None = None,
) -> dict[str, Any]:
    """The month's join token of every subject the campaign sent to that month, sorted:
    `HMAC(month key, hashed_id)`, base64url. Suppressed below k subjects."""
    return get_app(request).analytics.join_tokens(principal.tenant, month, campaign_id)


@router.post("/conversions", openapi_extra=request_body(ConversionsIn))
async def conversions(request: Request, principal: Reader) -> dict[str, Any]:
    """Record the join tokens of people who converted in `month` (replays count once)."""
    body = parse(ConversionsIn, await json_body(request))
    return await run_in_threadpool(
        get_app(request).analytics.record_conversions, principal.tenant, body.month, body.tokens
    )


@router.get("/attribution")
def attribution(
    request: Request,
    principal: Reader,
    campaign_id: str | None = None,
    month: Annotated[str | None, Query(description="YYYY-MM; default every month")] = None,
    dp_epsilon: Epsilon = None,
) -> dict[str, Any]:
    """Per month: subjects the campaign sent to and how many of them converted (conversion
    tokens matching its send tokens). Suppressed below k conversions."""
    return get_app(request).analytics.attribution(principal.tenant, campaign_id, month, dp_epsilon)
