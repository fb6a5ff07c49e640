"""Sending surface: device registration and templates (messages and campaigns follow)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Annotated, Any

import anyio.from_thread
from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from consentgate.api.deps import get_app, json_body, parse, require
from consentgate.api.models import (
    CampaignIn,
    CampaignOut,
    DeviceRegistrationIn,
    DeviceRegistrationOut,
    MessageIn,
    MessageOut,
    TemplateIn,
    TemplateOut,
)
from consentgate.api.openapi import request_body
from consentgate.crypto.envelope import DeviceKeyError, parse_device_jwk
from consentgate.delivery.registry import AppKey
from consentgate.delivery.templates import Template
from consentgate.domain.identity import normalise_phone
from consentgate.domain.timeutil import parse_rfc3339
from consentgate.errors import InvalidInput
from consentgate.tenants.service import Principal, Scope

router = APIRouter(prefix="/v1", tags=["sending"])

Sender = Annotated[Principal, Depends(require(Scope.SEND, Scope.ADMIN))]


@router.post(
    "/devices",
    status_code=201,
    response_model=DeviceRegistrationOut,
    openapi_extra=request_body(DeviceRegistrationIn),
)
async def register_device(request: Request, response: Response, principal: Sender) -> Any:
    """Register or refresh a device: the same `kid` refreshes it, a new `kid` rotates the key
    (the old one is never used again); expired or revoked keys are never used."""
    body = parse(DeviceRegistrationIn, await json_body(request))
    app = get_app(request)
    if (body.phone is None) == (body.hashed_id is None):
        raise InvalidInput("give exactly one of phone or hashed_id", field="phone")
    key = None
    if body.app_key is not None:
        try:
            parsed = parse_device_jwk(body.app_key)
        except DeviceKeyError as exc:
            raise InvalidInput(f"app_key: {exc}", field="app_key") from None
        key = AppKey(parsed.kid, parsed.suite, parsed.public_bytes)
    expires = (
        None if body.expires_at is None else parse_rfc3339(body.expires_at, field="expires_at")
    )
    subject: Any = (
        body.hashed_id
        if body.hashed_id is not None
        else app.links.hash_identifier(
            principal.tenant, normalise_phone(str(body.phone), principal.region)
        )
    )
    device_id, created = await run_in_threadpool(
        app.registry.register_device,
        principal.tenant,
        subject,
        rcs=body.rcs,
        native_e2ee=body.native_e2ee,
        key=key,
        expires_at=expires,
    )
    response.status_code = 201 if created else 200
    return {"device_id": device_id}


@router.delete("/devices/{device_id}", status_code=204)
def revoke_device(device_id: str, request: Request, principal: Sender) -> Response:
    """Revoke a device: its key is never used again."""
    get_app(request).registry.revoke_device(principal.tenant, device_id)
    return Response(status_code=204)


@router.post(
    "/templates",
    status_code=201,
    response_model=TemplateOut,
    openapi_extra=request_body(TemplateIn),
)
async def create_template(request: Request, principal: Sender) -> Any:
    """A template; `{{name}}` tokens are PII: filled on the device in encrypted modes, removed
    in fallbacks, never sent in clear."""
    body = parse(TemplateIn, await json_body(request))
    template = Template(str(uuid.uuid4()), body.name, body.text, body.rich_card, body.sensitive)
    template_id = await run_in_threadpool(
        get_app(request).registry.create_template, principal.tenant, template
    )
    return {"template_id": template_id}


@router.post("/messages", response_model=MessageOut, openapi_extra=request_body(MessageIn))
async def send_message(request: Request, principal: Sender) -> Any:
    """One message: consent checked at the last moment, the strongest encryption the device
    supports, every decision explained. The same `idempotency_key` returns the first answer
    and never sends twice."""
    body = parse(MessageIn, await json_body(request))
    app = get_app(request)
    to = normalise_phone(body.to, principal.region, field="to")
    return await run_in_threadpool(
        app.messages.send,
        principal.tenant,
        to,
        body.consent_type,
        body.template_id,
        dict(body.variables),
        body.idempotency_key,
    )


@router.post(
    "/campaigns",
    status_code=201,
    response_model=CampaignOut,
    openapi_extra=request_body(CampaignIn),
)
async def create_campaign(request: Request, principal: Sender) -> Any:
    """A draft campaign for one template and purpose."""
    body = parse(CampaignIn, await json_body(request))
    app = get_app(request)
    campaign_id = await run_in_threadpool(
        app.campaigns.create, principal.tenant, body.template_id, body.consent_type
    )
    return await run_in_threadpool(app.campaigns.status, principal.tenant, campaign_id)


@router.put(
    "/campaigns/{campaign_id}/audience",
    openapi_extra=request_body(
        schema={"type": "string"}, media_types=("text/csv", "application/x-ndjson")
    ),
)
async def put_audience(campaign_id: str, request: Request, principal: Sender) -> Any:
    """The audience, streamed: CSV with a `phone` column (`text/csv`) or NDJSON
    (`application/x-ndjson`, one `{"phone": ...}` per line). Numbers are hashed for the
    pre-filter and stored only encrypted; nothing is buffered whole in memory or on disk."""
    app = get_app(request)
    stream = request.stream()

    def chunks() -> Iterator[bytes]:
        while True:
            try:
                yield anyio.from_thread.run(stream.__anext__)
            except StopAsyncIteration:
                return

    return await run_in_threadpool(
        app.campaigns.upload,
        principal.tenant,
        principal.region,
        campaign_id,
        chunks(),
        request.headers.get("content-type", "text/csv"),
    )


@router.post("/campaigns/{campaign_id}/send", response_model=CampaignOut)
def send_campaign(campaign_id: str, request: Request, principal: Sender) -> Any:
    """Pre-filter the audience (one set-based query) and queue the rest for dispatch, where
    consent is checked again at send time."""
    return get_app(request).campaigns.send(principal.tenant, campaign_id)


@router.get("/campaigns/{campaign_id}", response_model=CampaignOut)
def get_campaign(campaign_id: str, request: Request, principal: Sender) -> Any:
    """Progress and counts by action and reason."""
    return get_app(request).campaigns.status(principal.tenant, campaign_id)
