"""CMP endpoints: signed webhooks per adapter, mappings, the CMP's receipt keys.

The webhook route is the service's hottest: a CMP may post one event per request, thousands
a second. In the app :mod:`consentgate.api.hotpath` answers it before routing (no
dependency solving, no thread hop: the delivery goes to the service's batcher); the route
here declares it for OpenAPI and makes the same service call should a request reach the
router. Errors leave as RFC 9457 problems either way.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from consentgate.api.deps import get_app, json_body, parse
from consentgate.api.models import CmpKeysIn
from consentgate.api.openapi import request_body
from consentgate.api.routers.consent import Admin
from consentgate.consent.cmp_webhooks import Delivery

router = APIRouter(tags=["cmp"])
_REPLAYED = {"Webhook-Replayed": "true"}


@router.post(
    "/v1/tenants/{tenant}/cmp/{adapter}/events",
    status_code=201,
    openapi_extra={
        **request_body(schema={"type": "object", "description": "the CMP's format"}),
        "parameters": [
            {"name": name, "in": "header", "required": True, "schema": {"type": "string"}}
            for name in ("webhook-id", "webhook-timestamp", "webhook-signature")
        ],
    },
    responses={
        200: {"description": "replayed webhook-id (original answer) or identical events"},
        401: {"description": "missing, stale or bad Standard Webhooks signature"},
        422: {"description": "payload cannot be mapped; nothing recorded"},
    },
)
async def cmp_webhook(tenant: str, adapter: str, request: Request) -> Response:
    """A CMP's own format (`generic`, `tcf`, `gpp`), signed per Standard Webhooks with the
    tenant's webhook secret."""
    delivery = Delivery(tenant, adapter, request.headers, await request.body())
    outcome = await get_app(request).cmp_webhooks.deliver(delivery)
    return Response(
        json.dumps(outcome.body, ensure_ascii=False, separators=(",", ":")).encode(),
        status_code=outcome.status,
        media_type="application/json",
        headers=_REPLAYED if outcome.replayed else None,
    )


@router.put(
    "/v1/cmp/{adapter}/mapping",
    openapi_extra=request_body(schema={"type": "object", "description": "adapter-specific"}),
)
async def put_mapping(adapter: str, request: Request, principal: Admin) -> Any:
    """How a CMP's purposes map to consentgate purposes (`tcf`: `{vendor_id?, purposes:
    {purpose: [TCF purpose ids]}}`; `gpp`: `{usnat: {SaleOptOut: [purposes], ...}}`)."""
    raw = await json_body(request)
    return await run_in_threadpool(
        get_app(request).cmp_settings.put_mapping, principal.tenant, adapter, raw
    )


@router.put("/v1/cmp/keys", openapi_extra=request_body(CmpKeysIn))
async def put_keys(request: Request, principal: Admin) -> Any:
    """The CMP's JWKS for its signed receipts, and whether every event must carry one."""
    body = parse(CmpKeysIn, await json_body(request))
    policy = await run_in_threadpool(
        get_app(request).cmp_settings.put_keys,
        principal.tenant,
        body.jwks,
        body.require_signed_receipts,
    )
    return {
        "keys": len((policy.jwks or {}).get("keys", [])),
        "require_signed_receipts": policy.required,
    }
