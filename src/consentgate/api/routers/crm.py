"""CRM/CMP sync: webhook endpoints and the deliveries the relay makes to them (scope admin).

Events (consent changes, send decisions, receipts) are delivered as Standard Webhooks
requests signed with the endpoint's secret; see docs/webhooks.md for the catalogue.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from consentgate.api.deps import get_app, json_body, parse, require
from consentgate.api.models import (
    CrmEndpointCreatedOut,
    CrmEndpointIn,
    CrmEndpointsOut,
    DeliveriesOut,
    DeliveryOut,
)
from consentgate.api.openapi import request_body
from consentgate.tenants.service import Principal, Scope

router = APIRouter(prefix="/v1/crm", tags=["crm"])

Admin = Annotated[Principal, Depends(require(Scope.ADMIN))]


@router.post(
    "/endpoints",
    status_code=201,
    response_model=CrmEndpointCreatedOut,
    openapi_extra=request_body(CrmEndpointIn),
)
async def create_endpoint(request: Request, principal: Admin) -> Any:
    """Register an endpoint for the listed event types. The answer holds the signing secret
    (`whsec_...`), shown this once."""
    body = parse(CrmEndpointIn, await json_body(request))
    return await run_in_threadpool(
        get_app(request).endpoints.create, principal.tenant, body.url, body.event_types, body.kind
    )


@router.get("/endpoints", response_model=CrmEndpointsOut)
def list_endpoints(request: Request, principal: Admin) -> Any:
    """The tenant's endpoints, disabled ones included (secrets are never shown again)."""
    return {"endpoints": get_app(request).endpoints.list(principal.tenant)}


@router.delete("/endpoints/{endpoint_id}", status_code=204)
def disable_endpoint(endpoint_id: str, request: Request, principal: Admin) -> Response:
    """Disable an endpoint: it receives nothing more; its pending deliveries become dead."""
    get_app(request).endpoints.disable(principal.tenant, endpoint_id)
    return Response(status_code=204)


@router.get("/deliveries", response_model=DeliveriesOut)
def list_deliveries(
    request: Request,
    principal: Admin,
    status: str | None = None,
    endpoint_id: str | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> Any:
    """Deliveries, newest first, optionally by `status` (`pending`, `delivered`, `dead`)
    and endpoint; pass `next_cursor` back as `cursor` for the next page (≤ 500 a page)."""
    return get_app(request).deliveries.list(
        principal.tenant, status=status, endpoint_id=endpoint_id, limit=limit, cursor=cursor
    )


@router.get("/deliveries/{delivery_id}", response_model=DeliveryOut)
def get_delivery(delivery_id: str, request: Request, principal: Admin) -> Any:
    """One delivery: its state, attempts, last error and the body sent."""
    return get_app(request).deliveries.get(principal.tenant, delivery_id)


@router.post("/deliveries/{delivery_id}/replay", response_model=DeliveryOut)
def replay_delivery(delivery_id: str, request: Request, principal: Admin) -> Any:
    """Send a delivered or dead delivery again, under the same `webhook-id` (receivers
    de-duplicate on it); 409 if its endpoint was disabled."""
    return get_app(request).deliveries.replay(principal.tenant, delivery_id)
