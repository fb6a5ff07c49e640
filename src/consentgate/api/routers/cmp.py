"""CMP endpoints: signed webhooks per adapter, mappings, the CMP's receipt keys.

The webhook route is the service's hottest: a CMP may post one event per request, thousands
a second. It is declared like any route (path, responses, OpenAPI) but served by
:class:`LeanRoute`, FastAPI's documented hook for a custom request handler: the handler
reads the path parameters and the raw body itself, skipping dependency solving and response
validation (~120 µs of CPU per request measured), and hands the delivery to the service's
batcher instead of a thread pool (no thread hop per request). Errors still leave as RFC 9457
problems: they are raised to the handlers of :mod:`consentgate.api.problems` like any
route's. (In the app as built by ``create_app``, :mod:`consentgate.api.hotpath` answers these
requests before routing, with the same service call; this route is what the router would
serve without it, and what OpenAPI documents.)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from consentgate.api.deps import get_app, json_body, parse
from consentgate.api.models import CmpKeysIn
from consentgate.api.openapi import request_body
from consentgate.api.routers.consent import Admin
from consentgate.consent.cmp_webhooks import Delivery

router = APIRouter(tags=["cmp"])
_REPLAYED = {"Webhook-Replayed": "true"}


async def _serve_webhook(request: Request) -> Response:
    params = request.path_params
    delivery = Delivery(params["tenant"], params["adapter"], request.headers, await request.body())
    outcome = await get_app(request).cmp_webhooks.deliver(delivery)
    return Response(
        json.dumps(outcome.body, ensure_ascii=False, separators=(",", ":")).encode(),
        status_code=outcome.status,
        media_type="application/json",
        headers=_REPLAYED if outcome.replayed else None,
    )


class LeanRoute(APIRoute):
    """An APIRoute whose requests go straight to :func:`_serve_webhook`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return _serve_webhook


lean_router = APIRouter(tags=["cmp"], route_class=LeanRoute)


@lean_router.post(
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
async def cmp_webhook(tenant: str, adapter: str) -> None:
    """A CMP's own format (`generic`, `tcf`, `gpp`), signed per Standard Webhooks with the
    tenant's webhook secret. (Documentation only: requests are served by LeanRoute.)"""


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
