"""Privacy endpoints: erasure of a subject, the tenant's retention settings (admin only)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from consentgate.api.deps import get_app, json_body, parse
from consentgate.api.models import ErasureOut, RetentionIn, RetentionOut
from consentgate.api.openapi import request_body
from consentgate.api.routers.consent import Admin
from consentgate.domain.retention import DEFAULT_POLICY, RetentionPolicy

router = APIRouter(prefix="/v1", tags=["privacy"])


def _retention_out(policy: RetentionPolicy) -> dict[str, Any]:
    return {**policy.as_dict(), "defaults": DEFAULT_POLICY.as_dict()}


@router.post(
    "/subjects/{hashed_id}/erase",
    response_model=ErasureOut,
    responses={404: {"description": "no subject with this hashed_id in this tenant"}},
)
def erase(hashed_id: str, request: Request, principal: Admin) -> Any:
    """Erase a subject: delete its hashed-id links (every salt version), consent state,
    devices, queued identifiers and the links of its send decisions, scrub cached answers and
    outbox events, and record the erasure as a ledger leaf. The ledger's leaves stay (with
    random refs), so every proof still verifies. Endpoints subscribed to ``subject.erased``
    are sent the subject's hashed ids, to erase their copies. A second call answers 404."""
    return get_app(request).erasure.erase(principal.tenant, hashed_id).as_dict()


@router.get("/retention", response_model=RetentionOut)
def get_retention(request: Request, principal: Admin) -> Any:
    """The tenant's retention horizons, in days, and the defaults."""
    return _retention_out(get_app(request).retention.policy(principal.tenant))


@router.put("/retention", response_model=RetentionOut, openapi_extra=request_body(RetentionIn))
async def put_retention(request: Request, principal: Admin) -> Any:
    """Replace the retention horizons (fields left out take their defaults). `consentgate
    retention run` applies them."""
    body = parse(RetentionIn, await json_body(request))
    policy = await run_in_threadpool(
        get_app(request).retention.set_policy,
        principal.tenant,
        body.model_dump(exclude_none=True),
    )
    return _retention_out(policy)
