"""Consent receipts (auditor-verifiable) and consent tokens (edge checks)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from consentgate.api.deps import get_app, json_body, parse, subject_of
from consentgate.api.models import ConsentTokenIn, ConsentTokenOut, ReceiptOut
from consentgate.api.openapi import request_body
from consentgate.api.routers.consent import Auditor, Reader

router = APIRouter(prefix="/v1", tags=["receipts"])


@router.get("/subjects/{hashed_id}/receipt", response_model=ReceiptOut)
def receipt(
    hashed_id: str,
    request: Request,
    principal: Auditor,
    consent_type: Annotated[str, Query(min_length=1, max_length=64)],
) -> Any:
    """A signed receipt for the leaf that decides the subject's state for `consent_type`,
    with the leaf, its inclusion proof and the checkpoint: verifiable offline with
    `consentgate receipt verify`."""
    return get_app(request).receipts.receipt(principal.tenant, hashed_id, consent_type)


@router.post(
    "/consent-tokens",
    response_model=ConsentTokenOut,
    openapi_extra=request_body(ConsentTokenIn),
    responses={403: {"description": "no grant in force; `reason` says why"}},
)
async def consent_token(request: Request, principal: Reader) -> Any:
    """A short-lived JWT (≤ 15 min) stating a grant in force, signed like receipts."""
    body = parse(ConsentTokenIn, await json_body(request))
    app = get_app(request)
    named = subject_of(body, principal.region)
    subject: Any = (
        named if isinstance(named, str) else app.links.hash_identifier(principal.tenant, named)
    )
    return await run_in_threadpool(
        app.receipts.token, principal.tenant, subject, body.consent_type, body.ttl_seconds
    )
