"""CMP endpoints: signed webhooks per adapter, mappings, the CMP's receipt keys."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from consentgate.api.deps import get_app, json_body, parse
from consentgate.api.models import CmpKeysIn
from consentgate.api.routers.consent import Admin

router = APIRouter(tags=["cmp"])


@router.post(
    "/v1/tenants/{tenant}/cmp/{adapter}/events",
    status_code=201,
    responses={
        200: {"description": "replayed webhook-id (original answer) or identical events"},
        401: {"description": "missing, stale or bad Standard Webhooks signature"},
        422: {"description": "payload cannot be mapped; nothing recorded"},
    },
)
async def cmp_webhook(tenant: str, adapter: str, request: Request) -> JSONResponse:
    """A CMP's own format (`generic`, `tcf`, `gpp`), signed per Standard Webhooks with the
    tenant's webhook secret."""
    body = await request.body()
    outcome = await run_in_threadpool(
        get_app(request).cmp_webhooks.handle, tenant, adapter, request.headers, body
    )
    headers = {"Webhook-Replayed": "true"} if outcome.replayed else None
    return JSONResponse(outcome.body, status_code=outcome.status, headers=headers)


@router.put("/v1/cmp/{adapter}/mapping")
async def put_mapping(adapter: str, request: Request, principal: Admin) -> Any:
    """How a CMP's purposes map to consentgate purposes (`tcf`: `{vendor_id?, purposes:
    {purpose: [TCF purpose ids]}}`; `gpp`: `{usnat: {SaleOptOut: [purposes], ...}}`)."""
    raw = await json_body(request)
    return await run_in_threadpool(
        get_app(request).cmp_settings.put_mapping, principal.tenant, adapter, raw
    )


@router.put("/v1/cmp/keys")
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
