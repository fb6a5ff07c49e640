"""Provider callbacks (receipts, replies, unsubscribes) and reading a message's status.

``POST /v1/providers/{provider}/callbacks`` takes no API key: each provider authenticates
its callbacks by signature (RBM: ``X-Goog-Signature``; Twilio: ``X-Twilio-Signature``), and
the adapter checks it. RBM's webhook set-up handshake (``{"clientToken", "secret"}``, sent
unsigned) is answered with the secret as the plain-text body, as RBM expects.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from consentgate.api.deps import get_app, require
from consentgate.api.openapi import request_body
from consentgate.delivery.callbacks import CallbackService
from consentgate.delivery.providers import rbm
from consentgate.delivery.providers.base import header
from consentgate.domain.strictjson import require_media_type
from consentgate.tenants.service import Principal, Scope

router = APIRouter(prefix="/v1")

_MEDIA = {"rbm": "application/json", "sms": "application/x-www-form-urlencoded"}

Reader = Annotated[Principal, Depends(require(Scope.SEND, Scope.AUDIT_READ, Scope.ADMIN))]


def _service(request: Request) -> CallbackService:
    """One service per FastAPI app, built on first use from the composition root."""
    service: CallbackService | None = getattr(request.app.state, "callback_service", None)
    if service is None:
        core = get_app(request)
        service = CallbackService(
            core.engine,
            core.tenants,
            core.links,
            core.ingest,
            core.committer,
            core.messages.providers,
            core.clock,
            core.metrics,
            outbox=core.outbox,
        )
        request.app.state.callback_service = service
    return service


@router.post(
    "/providers/{provider}/callbacks",
    tags=["sending"],
    openapi_extra=request_body(
        schema={"type": "object", "description": "the provider's format: RBM JSON, Twilio form"},
        media_types=("application/json", "application/x-www-form-urlencoded"),
    ),
    responses={
        200: {
            "description": "applied: `{events, linked, ignored, withdrawals, replayed}`; for "
            "RBM's set-up handshake, the secret as text/plain"
        },
        401: {"description": "missing or bad provider signature; nothing changed"},
        404: {"description": "no such provider"},
        422: {"description": "signed, but not readable in the provider's format"},
    },
)
async def provider_callback(provider: str, request: Request) -> Response:
    """Delivery receipts, reads, failures and inbound replies from a provider (`rbm`,
    `sms`). A reply that is a stop keyword (STOP, UNSUBSCRIBE, STOPALL, CANCEL, END, QUIT,
    the whole text, any case) or an unsubscribe event withdraws the sender's marketing
    purposes (names starting `marketing`), recorded with source `inbound_keyword`."""
    service = _service(request)
    target = service.provider(provider)
    # RBM posts JSON, Twilio a form; a body labelled otherwise is not read as either.
    expected = _MEDIA.get(provider)
    if expected is not None:
        require_media_type(request.headers.get("content-type"), expected)
    body = await request.body()
    if (
        isinstance(target, rbm.RbmProvider)
        and header(request.headers, rbm.SIGNATURE_HEADER) is None
    ):
        # RBM's set-up check is unsigned: it proves the endpoint knows the client token.
        # (The token is the adapter's private key material; it never leaves this process.)
        secret = rbm.webhook_verification_secret(body, target._client_token)
        if secret is not None:
            return PlainTextResponse(secret)
    summary = await run_in_threadpool(service.handle, provider, request.headers, body)
    return JSONResponse(summary)


@router.get("/messages/{message_id}", tags=["sending"])
def read_message(message_id: str, request: Request, principal: Reader) -> Any:
    """One message: its decision, current status (`sent` → `delivered` → `read`, or
    `failed`; never backwards) and the provider's receipts, oldest first."""
    return _service(request).message(principal.tenant, message_id)
