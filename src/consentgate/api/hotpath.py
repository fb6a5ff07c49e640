"""The busiest routes, answered without FastAPI's per-request machinery.

Measured in-process on the 2-core test machine, the cheapest FastAPI route (``/healthz``)
cost ~0.8 ms of CPU per request and a consent lookup ~1.3 ms: dependency solving, response
validation, and above all the thread-pool hops (sync routes and sync dependencies each move
to a worker thread and back: a futex wake and a GIL handover every time). At the thousands
of lookups a second an edge of the product has to answer, that overhead, not the database,
was the limit.

:class:`HotPath` is a pure ASGI middleware that serves, itself, the routes named below, with
the same authentication (an API key already authenticated in this process, from the
principal cache), the same scope rules, the same services and the same RFC 9457 problems
(:func:`consentgate.api.problems.problem_parts`). Whatever it does not handle on the spot —
a key this process has not seen yet, a path that does not match exactly — goes to the
FastAPI app unchanged, so every edge case keeps exactly one implementation. The routes stay
declared in their routers (OpenAPI, documentation); the access log and request metrics see
them under their templates as before (``scope["route"]``).

- ``GET /v1/subjects/{hashed_id}/consents``: one indexed read. On SQLite it runs on the
  event loop (a WAL read never waits for a writer; ~20 µs); on PostgreSQL in the thread
  pool, so a slow database never stalls the loop.
- ``POST /v1/tenants/{tenant}/cmp/{adapter}/events``: straight to the webhook service's
  batcher (:mod:`consentgate.consent.batcher`), as its LeanRoute did, minus the router.
- ``POST /v1/consent-events`` with one event: validated by the route's own model, then
  queued to :mod:`consentgate.consent.single` (no thread-pool hop). A batch, or a body the
  model refuses, goes to the app with the body replayed, for the same answer as ever.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from consentgate.api.models import ConsentEventIn
from consentgate.api.problems import problem_parts, send_answer
from consentgate.bootstrap import App
from consentgate.consent.cmp_webhooks import Delivery
from consentgate.consent.ingest import EventInput
from consentgate.domain import strictjson
from consentgate.errors import ConsentGateError
from consentgate.tenants.service import Principal
from consentgate.tenants.service import Scope as ApiScope

_JSON = b"application/json"
_READERS = frozenset({ApiScope.CONSENT_READ, ApiScope.ADMIN})
_WRITERS = frozenset({ApiScope.CONSENT_WRITE, ApiScope.ADMIN})


@dataclass(frozen=True)
class _Template:
    """What the access log reads from ``scope["route"]`` (see observability.http)."""

    path_format: str


_LOOKUP = _Template("/v1/subjects/{hashed_id}/consents")
_WEBHOOK = _Template("/v1/tenants/{tenant}/cmp/{adapter}/events")
_INGEST = _Template("/v1/consent-events")

Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]


class HotPath:
    def __init__(self, app: ASGIApp, core: App) -> None:
        self.app = app
        self.core = core
        self.inline_reads = core.engine.dialect.name == "sqlite"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            method, path = scope["method"], scope["path"]
            handler: Callable[[Scope, Receive, list[str]], Awaitable[Answer | None]] | None
            handler = None
            if path.startswith("/v1/"):
                parts = path[4:].split("/")
                n = len(parts)
                if method == "GET" and n == 3 and parts[0] == "subjects" and parts[2] == "consents":
                    handler, scope["route"] = self._lookup, _LOOKUP
                elif (
                    method == "POST"
                    and n == 5
                    and parts[0] == "tenants"
                    and parts[2] == "cmp"
                    and parts[4] == "events"
                ):
                    handler, scope["route"] = self._webhook, _WEBHOOK
                elif method == "POST" and n == 1 and parts[0] == "consent-events":
                    handler, scope["route"] = self._ingest, _INGEST
            if handler is not None:
                read: list[bytes] = []  # the body, once a handler has read it
                answer = await handler(scope, _Recorder(receive, read), parts)
                if answer is not None:
                    await send_answer(send, *answer)
                    return
                scope.pop("route", None)  # the app's router sets its own
                if read:
                    receive = _replay(read[0])
        await self.app(scope, receive, send)

    # -- routes ------------------------------------------------------------------------

    async def _lookup(self, scope: Scope, receive: Receive, parts: list[str]) -> Answer | None:
        principal = self._principal(scope)
        if principal is None or not principal.scopes.intersection(_READERS):
            return None  # the app answers: it authenticates, caches, or refuses
        hashed_id = parts[1]
        query = self.core.queries.by_hashed_id
        try:
            if self.inline_reads:
                found = query(principal.tenant, hashed_id)
            else:
                found = await run_in_threadpool(query, principal.tenant, hashed_id)
        except ConsentGateError as exc:
            return _problem(exc, scope["path"])
        return 200, _dumps(found.as_dict()), [(b"content-type", _JSON)]

    async def _webhook(self, scope: Scope, receive: Receive, parts: list[str]) -> Answer | None:
        body = await _body(receive)
        delivery = Delivery(parts[1], parts[3], _Headers(scope["headers"]), body)
        try:
            outcome = await self.core.cmp_webhooks.deliver(delivery)
        except ConsentGateError as exc:
            return _problem(exc, scope["path"])
        headers = [(b"content-type", _JSON)]
        if outcome.replayed:
            headers.append((b"webhook-replayed", b"true"))
        return outcome.status, _dumps(outcome.body), headers

    async def _ingest(self, scope: Scope, receive: Receive, parts: list[str]) -> Answer | None:
        """One event; a batch, or anything the model refuses, goes to the app (its 4xx)."""
        principal = self._principal(scope)
        if principal is None or not principal.scopes.intersection(_WRITERS):
            return None
        try:
            doc = strictjson.loads(await _body(receive))  # as the app's json_body
            if not isinstance(doc, dict) or "events" in doc:
                return None
            event = EventInput(**ConsentEventIn.model_validate(doc).model_dump())
        except (ValueError, RecursionError, ValidationError):
            return None
        try:
            result = await self.core.single_ingest.submit(principal.tenant, principal.region, event)
        except ConsentGateError as exc:
            return _problem(exc, scope["path"])
        status = 201 if result.created else 200
        return status, _dumps(result.as_dict()), [(b"content-type", _JSON)]

    def _principal(self, scope: Scope) -> Principal | None:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                token = token.strip()
                if scheme.lower() != "bearer" or not token:
                    return None
                return self.core.tenants.cached_principal(token)
        return None


class _Headers(dict[str, str]):
    """Request headers by lower-case name (what the webhook service reads), built once."""

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        super().__init__((k.decode("latin-1"), v.decode("latin-1")) for k, v in raw)


class _Recorder:
    """A ``receive`` that keeps the body it hands out, for :func:`_replay`."""

    def __init__(self, receive: Receive, read: list[bytes]) -> None:
        self._receive = receive
        self._read = read

    async def __call__(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            if self._read:
                self._read[0] += message.get("body", b"")
            else:
                self._read.append(message.get("body", b""))
        return message


def _replay(body: bytes) -> Receive:
    """A ``receive`` that gives the app the body a handler already read, then waits as
    the server's would (until the client disconnects, which here it never reports)."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # pragma: no cover - apps stop at more_body False
        return {"type": "http.disconnect"}

    return receive


async def _body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def _problem(exc: ConsentGateError, instance: str) -> Answer:
    status, body, headers = problem_parts(exc, instance)
    return status, body, [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
