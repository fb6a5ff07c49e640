"""Audit endpoints (scope ``audit:read``, or ``admin``): point-in-time consent, sends by mode,
fallbacks, and a subject's export bundle. Read-only; JSON pages by default, CSV on
``Accept: text/csv`` (the whole answer streamed, or one page when ``limit`` is given, with the
next page in a ``Link: <...>; rel="next"`` header)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from consentgate.api.deps import get_app, require
from consentgate.audit import csvout
from consentgate.audit.pointintime import SubjectState
from consentgate.audit.sends import Send
from consentgate.tenants.service import Principal, Scope

router = APIRouter(prefix="/v1/audit", tags=["audit"])

AuditReader = Annotated[Principal, Depends(require(Scope.AUDIT_READ, Scope.ADMIN))]
CSV = "text/csv; charset=utf-8"
DEFAULT_LIMIT = 1000
Limit = Annotated[int | None, Query(ge=1, le=10_000, description="page size (JSON: 1000)")]
Cursor = Annotated[str | None, Query(max_length=200, description="next_cursor of a page")]
Instant = Annotated[str, Query(max_length=64, description="RFC 3339 date-time")]


class SubjectStateOut(BaseModel):
    hashed_id: str | None
    status: str
    effective_at: str
    seq: int


class ConsentsAsOfOut(BaseModel):
    as_of: str
    known_at: str | None
    consent_type: str
    status: str
    subjects: list[SubjectStateOut]
    next_cursor: str | None


class SendOut(BaseModel):
    message_id: str
    hashed_id: str | None
    consent_type: str
    action: str
    mode: str | None
    reason: str | None
    consent_seq: int | None
    template_id: str
    campaign_id: str | None
    at: str


class SendsOut(BaseModel):
    from_: str = Field(alias="from")
    to: str
    by_mode: dict[str, int]
    by_action: dict[str, int]
    sends: list[SendOut]
    next_cursor: str | None


class FallbackOut(BaseModel):
    message_id: str
    hashed_id: str | None
    mode: str | None
    reason: str | None
    at: str


class FallbacksOut(BaseModel):
    from_: str = Field(alias="from")
    to: str
    fallbacks: list[FallbackOut]
    next_cursor: str | None


def _wants_csv(request: Request) -> bool:
    """True when the client asks for text/csv (and does not refuse it with q=0)."""
    for part in request.headers.get("accept", "").split(","):
        media, *params = (p.strip() for p in part.split(";"))
        if media.lower() == "text/csv":
            return not any(p.replace(" ", "") in ("q=0", "q=0.0", "q=0.00") for p in params)
    return False


def _csv_page(
    request: Request, columns: tuple[str, ...], rows: Iterable[dict[str, Any]], cursor: Any
) -> Response:
    headers = {}
    if cursor:
        url = request.url.include_query_params(cursor=cursor)
        headers["Link"] = f'<{url.path}?{url.query}>; rel="next"'
    body = "".join(csvout.render(columns, rows, lambda row: row))
    return Response(body, media_type=CSV, headers=headers)


_CSV_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {}}, "description": "JSON, or CSV on Accept: text/csv"}
}


@router.get("/consents", response_model=ConsentsAsOfOut, responses=_CSV_RESPONSE)
def consents_as_of(
    request: Request,
    principal: AuditReader,
    as_of: Instant,
    consent_type: Annotated[str, Query(min_length=1, max_length=64)],
    known_at: Annotated[str | None, Query(max_length=64)] = None,
    status: Annotated[str, Query(max_length=16, description="granted|withdrawn|expired|all")] = (
        "granted"
    ),
    limit: Limit = None,
    cursor: Cursor = None,
) -> Response:
    """Each subject's `consent_type` state at instant `as_of`, recomputed from the ledger
    (events timestamped ≤ `as_of`; with `known_at`, only those received by then), by the
    live rules. Default: granted only; `status=all` for every state."""
    audit = get_app(request).audit
    query = audit.as_of_query(
        principal.tenant, as_of=as_of, consent_type=consent_type, known_at=known_at, status=status
    )
    if _wants_csv(request):
        if limit is None:
            items = audit.consents_stream(principal.tenant, query, cursor, None)
            return StreamingResponse(
                csvout.render(csvout.CONSENT_COLUMNS, items, SubjectState.as_dict), media_type=CSV
            )
        page = audit.consents_page(principal.tenant, query, cursor, limit)
        return _csv_page(request, csvout.CONSENT_COLUMNS, page["subjects"], page["next_cursor"])
    return JSONResponse(
        audit.consents_page(principal.tenant, query, cursor, limit or DEFAULT_LIMIT)
    )


def _sends(
    request: Request,
    principal: Principal,
    from_: str,
    to: str,
    limit: int | None,
    cursor: str | None,
    fallbacks_only: bool,
) -> Response:
    audit = get_app(request).audit
    span = audit.time_range(from_, to)
    key = "fallbacks" if fallbacks_only else "sends"
    columns = csvout.FALLBACK_COLUMNS if fallbacks_only else csvout.SEND_COLUMNS
    if _wants_csv(request):
        if limit is None:
            items = audit.sends_stream(
                principal.tenant, span, cursor, None, fallbacks_only=fallbacks_only
            )
            render = Send.as_fallback if fallbacks_only else Send.as_dict
            return StreamingResponse(csvout.render(columns, items, render), media_type=CSV)
        page = audit.sends_page(
            principal.tenant, span, cursor, limit, fallbacks_only=fallbacks_only
        )
        return _csv_page(request, columns, page[key], page["next_cursor"])
    return JSONResponse(
        audit.sends_page(
            principal.tenant, span, cursor, limit or DEFAULT_LIMIT, fallbacks_only=fallbacks_only
        )
    )


@router.get("/sends", response_model=SendsOut, responses=_CSV_RESPONSE)
def sends(
    request: Request,
    principal: AuditReader,
    from_: Annotated[str, Query(alias="from", max_length=64, description="RFC 3339")],
    to: Instant,
    limit: Limit = None,
    cursor: Cursor = None,
) -> Response:
    """Every decided message accepted in [`from`, `to`): counts `by_mode` (messages that went
    out) and `by_action`, and the sends, each with the ledger seq of the grant that allowed
    it."""
    return _sends(request, principal, from_, to, limit, cursor, fallbacks_only=False)


@router.get("/fallbacks", response_model=FallbacksOut, responses=_CSV_RESPONSE)
def fallbacks(
    request: Request,
    principal: AuditReader,
    from_: Annotated[str, Query(alias="from", max_length=64, description="RFC 3339")],
    to: Instant,
    limit: Limit = None,
    cursor: Cursor = None,
) -> Response:
    """Every fallback (secure link, redacted SMS) accepted in [`from`, `to`), with its reason
    code."""
    return _sends(request, principal, from_, to, limit, cursor, fallbacks_only=True)


@router.get(
    "/subjects/{hashed_id}/export",
    responses={200: {"content": {"application/json": {}}, "description": "the bundle"}},
)
def export(hashed_id: str, request: Request, principal: AuditReader) -> Response:
    """One signed JSON bundle (canonical bytes): the subject's leaves with inclusion proofs
    against one checkpoint, that checkpoint, receipts, sends and delivery events. Check it
    offline with `consentgate audit verify-bundle`; see docs/audit-bundle.md."""
    bundle = get_app(request).exports.export(principal.tenant, hashed_id)
    return Response(bundle, media_type="application/json")
