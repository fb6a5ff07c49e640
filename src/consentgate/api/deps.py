"""Request dependencies: the composition root and the authenticated principal."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from consentgate.bootstrap import App
from consentgate.domain import strictjson
from consentgate.domain.identity import Identifier, normalise_email, normalise_phone
from consentgate.errors import Forbidden, InvalidInput
from consentgate.tenants.service import Principal, Scope

M = TypeVar("M", bound=BaseModel)

#: The largest integer the database's BIGINT columns hold. A number past it in a path or
#: query is refused as invalid input (422) instead of overflowing the driver (a 500).
MAX_INT64 = 2**63 - 1


def get_app(request: Request) -> App:
    app: App = request.app.state.consentgate
    return app


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def require(*scopes: Scope) -> Callable[[Request], Coroutine[Any, Any, Principal]]:
    """A dependency: the caller's principal, which must hold one of ``scopes``."""

    async def dependency(request: Request) -> Principal:
        app = get_app(request)
        key = _bearer(request)
        # A recently seen key needs no I/O: skip the thread hop.
        principal = app.tenants.cached_principal(key) if key else None
        if principal is None:
            principal = await run_in_threadpool(app.tenants.authenticate, key)
        if not principal.scopes.intersection(scopes):
            needed = " or ".join(s.value for s in scopes)
            raise Forbidden(f"this API key lacks the {needed} scope")
        return principal

    return dependency


async def json_body(request: Request) -> Any:
    """The body as strict JSON (:mod:`consentgate.domain.strictjson`); bad UTF-8, malformed
    or ambiguous JSON (a repeated name) is a 400 problem."""
    raw = await request.body()
    try:
        return strictjson.loads(raw)
    except strictjson.NotJson as exc:
        raise MalformedBody(f"the body is not valid UTF-8 JSON: {exc}") from None


class MalformedBody(InvalidInput):
    code = "malformed-request"
    status = 400
    title = "Malformed request"


def parse(model: type[M], data: Any) -> M:
    return model.model_validate(data)


def subject_of(body: Any, region: str | None) -> str | Identifier:
    """The person a request names: exactly one of ``phone`` (normalised in the tenant's
    region), ``email`` or ``hashed_id`` (returned as given, a string)."""
    given = [n for n in ("phone", "email", "hashed_id") if getattr(body, n) is not None]
    if len(given) != 1:
        raise InvalidInput("give exactly one of phone, email or hashed_id", field="phone")
    if body.hashed_id is not None:
        return str(body.hashed_id)
    if body.phone is not None:
        return normalise_phone(body.phone, region)
    return normalise_email(str(body.email))
