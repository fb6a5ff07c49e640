"""Every error leaves as RFC 9457 ``application/problem+json``.

Problem ``type`` URIs are relative references to ``/problems/{code}``, which this service
serves as a short description, so a client can follow the link it was given. Validation
messages come from the field's rule, never from its value: nothing a caller sent is echoed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.types import Send

from consentgate.errors import ConsentGateError

log = logging.getLogger("consentgate.api")

PROBLEM_JSON = "application/problem+json"

DESCRIPTIONS: dict[str, str] = {
    "invalid-input": "Well-formed JSON, but a field is invalid; see `field` and `errors`.",
    "malformed-request": "The body is not valid JSON (or not UTF-8), or has the wrong shape.",
    "not-found": "No such resource for this tenant.",
    "conflict": "The request contradicts what is recorded (e.g. a consent_id reused).",
    "unauthenticated": "No API key, or an unknown or revoked one: send Authorization: Bearer.",
    "forbidden": "The API key lacks the scope this operation needs.",
    "consent-refused": "No consent is in force for this subject and purpose; see `reason`.",
    "privacy-budget-exhausted": "This query's epsilon exceeds the month's remaining privacy "
    "budget; nothing was charged. The budget refills each calendar month (UTC).",
    "store-unavailable": "The consent store cannot be reached; nothing was changed. Retry.",
    "payload-too-large": "The request body exceeds the configured limit.",
    "unsupported-media-type": "The body's Content-Type is not one this endpoint reads.",
    "method-not-allowed": "The path exists but not with this method.",
    "internal": "An unexpected error; it has been logged without request data.",
}


def problem(
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    instance: str | None = None,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"/problems/{code}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    if extra:
        body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def problem_parts(exc: ConsentGateError, instance: str) -> tuple[int, bytes, dict[str, str]]:
    """A domain error as (status, problem+json body, headers): what the app's handler sends,
    for callers that answer without a Request (the hot path, :mod:`consentgate.api.hotpath`)."""
    body: dict[str, Any] = {
        "type": f"/problems/{exc.code}",
        "title": exc.title,
        "status": exc.status,
        "detail": exc.detail,
        "instance": instance,
        **({"field": exc.field} if exc.field else {}),
        **exc.extra,
    }
    headers = {"content-type": PROBLEM_JSON}
    if exc.status == 401:
        headers["www-authenticate"] = "Bearer"
    if exc.status >= 500:
        log.error("request failed: %s (%s)", exc.code, type(exc).__name__)
    encoded = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    return exc.status, encoded, headers


async def send_answer(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    """A whole response from a pure ASGI layer (body limits, the hot path): ``headers`` plus
    Content-Length, then the body."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode("ascii"))],
        }
    )
    await send({"type": "http.response.body", "body": body})


def field_path(loc: Sequence[int | str]) -> str:
    """('body', 'events', 3, 'phone') → 'events[3].phone'."""
    out = ""
    for part in loc:
        if part in ("body", "query", "path", "header"):
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "body"


def validation_problem(errors: Sequence[Any], instance: str) -> JSONResponse:
    items = []
    for err in errors:
        if err.get("type") in {"json_invalid", "json_type"}:
            return problem(
                400,
                "malformed-request",
                "Malformed request",
                "the body is not valid JSON",
                instance=instance,
            )
        items.append({"field": field_path(err.get("loc", ())), "detail": err.get("msg", "invalid")})
    first = items[0] if items else {"field": "body", "detail": "invalid"}
    return problem(
        422,
        "invalid-input",
        "Invalid input",
        f"{first['field']}: {first['detail']}",
        instance=instance,
        extra={"field": first["field"], "errors": items},
    )


def install(app: FastAPI) -> None:
    @app.exception_handler(ConsentGateError)
    async def _domain(request: Request, exc: ConsentGateError) -> Response:
        status, body, headers = problem_parts(exc, request.url.path)
        media = headers.pop("content-type")
        return Response(body, status_code=status, media_type=media, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_problem(exc.errors(), request.url.path)

    @app.exception_handler(ValidationError)
    async def _validation(request: Request, exc: ValidationError) -> JSONResponse:
        return validation_problem(exc.errors(), request.url.path)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not-found", 405: "method-not-allowed", 413: "payload-too-large"}.get(
            exc.status_code, "malformed-request"
        )
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        return problem(
            exc.status_code,
            code,
            code.replace("-", " ").capitalize(),
            detail,
            instance=request.url.path,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The exception type only: messages and tracebacks could carry request data.
        log.error("unexpected %s on %s %s", type(exc).__name__, request.method, request.url.path)
        return problem(
            500,
            "internal",
            "Internal error",
            "an unexpected error occurred",
            instance=request.url.path,
        )

    @app.get("/problems/{code}", include_in_schema=False)
    async def _describe(code: str) -> PlainTextResponse:
        text = DESCRIPTIONS.get(code)
        if text is None:
            return PlainTextResponse("unknown problem type\n", status_code=404)
        return PlainTextResponse(f"{code}\n\n{text}\n")
