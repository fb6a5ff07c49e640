"""Consent endpoints: ingest, lookups, subject state and history, the purpose catalogue."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from consentgate.api.deps import get_app, json_body, parse, require, subject_of
from consentgate.api.models import (
    BatchOut,
    ConsentBatchIn,
    ConsentEventIn,
    ConsentsOut,
    HistoryOut,
    IngestOut,
    LookupIn,
    PurposeIn,
    PurposeOut,
)
from consentgate.api.openapi import request_body
from consentgate.consent.ingest import EventInput
from consentgate.tenants.service import Principal, Scope

router = APIRouter(prefix="/v1", tags=["consent"])

Writer = Annotated[Principal, Depends(require(Scope.CONSENT_WRITE, Scope.ADMIN))]
Reader = Annotated[Principal, Depends(require(Scope.CONSENT_READ, Scope.ADMIN))]
Auditor = Annotated[Principal, Depends(require(Scope.CONSENT_READ, Scope.AUDIT_READ, Scope.ADMIN))]
Admin = Annotated[Principal, Depends(require(Scope.ADMIN))]

_EVENT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {"$ref": "#/components/schemas/ConsentEventIn"},
                        {"$ref": "#/components/schemas/ConsentBatchIn"},
                    ]
                },
                "examples": {
                    "one": {
                        "value": {
                            "consent_id": "cmp-7f3a",
                            "phone": "+447911123456",
                            "consent_type": "marketing_rcs",
                            "status": "granted",
                            "timestamp": "2026-11-27T09:30:00Z",
                            "cmp_version": "onetrust-6.2",
                            "source": "web",
                        }
                    }
                },
            }
        },
    }
}


def _to_input(ev: ConsentEventIn) -> EventInput:
    return EventInput(**ev.model_dump())


@router.post(
    "/consent-events",
    status_code=201,
    openapi_extra=_EVENT_BODY,
    responses={
        200: {"description": "identical replay of a recorded consent_id"},
        409: {"description": "consent_id already recorded with other content"},
        422: {"description": "invalid event; nothing recorded"},
    },
    response_model=IngestOut | BatchOut,
)
async def ingest(request: Request, response: Response, principal: Writer) -> Any:
    """Record one event, or `{"events": [...]}` (≤ 1000, all-or-nothing)."""
    body = await json_body(request)
    app = get_app(request)
    batch = isinstance(body, dict) and "events" in body
    events = (
        [_to_input(e) for e in parse(ConsentBatchIn, body).events]
        if batch
        else [_to_input(parse(ConsentEventIn, body))]
    )
    prepared = await run_in_threadpool(
        app.ingest.prepare, principal.tenant, principal.region, events, batch=batch
    )
    results = await run_in_threadpool(app.committer.submit, principal.tenant, prepared)
    response.status_code = 201 if any(r.created for r in results) else 200
    if batch:
        return {"events": [r.as_dict() for r in results]}
    return results[0].as_dict()


@router.post("/consents/lookup", response_model=ConsentsOut, openapi_extra=request_body(LookupIn))
async def lookup(request: Request, principal: Reader) -> Any:
    """Current state per purpose for `{phone}`, `{email}` or `{hashed_id}`."""
    body = parse(LookupIn, await json_body(request))
    app = get_app(request)
    subject = subject_of(body, principal.region)
    if isinstance(subject, str):
        result = await run_in_threadpool(app.queries.by_hashed_id, principal.tenant, subject)
    else:
        result = await run_in_threadpool(app.queries.by_identifier, principal.tenant, subject)
    return result.as_dict()


@router.get("/subjects/{hashed_id}/consents", response_model=ConsentsOut)
def subject_consents(hashed_id: str, request: Request, principal: Reader) -> Any:
    """Current state per purpose: status, effective_at, event_seq, expires_at."""
    found = get_app(request).queries.by_hashed_id(principal.tenant, hashed_id)
    # Built by our own code to the documented model: skip re-validating it on the hot path.
    return JSONResponse(found.as_dict())


@router.get("/subjects/{hashed_id}/history", response_model=HistoryOut)
def subject_history(hashed_id: str, request: Request, principal: Auditor) -> Any:
    """Every ledger event for the subject, in ledger order (oldest first)."""
    events = get_app(request).queries.history(principal.tenant, hashed_id)
    return {"hashed_id": hashed_id, "events": events}


@router.get("/purposes", response_model=list[PurposeOut])
def list_purposes(request: Request, principal: Reader) -> Any:
    """The tenant's purpose catalogue and each purpose's maximum grant age."""
    return [_purpose_out(p) for p in get_app(request).tenants.list_purposes(principal.tenant)]


@router.put("/purposes/{name}", response_model=PurposeOut, openapi_extra=request_body(PurposeIn))
async def put_purpose(name: str, request: Request, principal: Admin) -> Any:
    """Create a purpose or change its maximum age (existing grants' expiry moves with it)."""
    body = parse(PurposeIn, await json_body(request))
    purpose = await run_in_threadpool(
        get_app(request).tenants.set_purpose,
        principal.tenant,
        name,
        body.max_age_days,
        body.description,
    )
    return _purpose_out(purpose)


def _purpose_out(p: Any) -> dict[str, Any]:
    return {
        "name": p.name,
        "max_age_days": None if p.max_age is None else p.max_age.days,
        "description": p.description,
    }
