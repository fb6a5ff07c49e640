"""The HTTP access log and request metrics, as one pure ASGI middleware.

It replaces uvicorn's access log, which prints the concrete path: ours would hold hashed ids,
message ids and, under the sandbox carrier, phone numbers. This one logs and counts the route
*template* the request matched (``/v1/subjects/{hashed_id}/consents``), or ``<unmatched>``,
never the path or the query string. Each request gets an id (a caller's ``X-Request-ID`` when
it is a short token, a new one otherwise), returned in the response's ``X-Request-ID`` and
attached to every log line written while serving it.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from consentgate.observability.logs import request_id, scrub, write_access
from consentgate.observability.metrics import UNMATCHED, Metrics

log = logging.getLogger("consentgate.access")
_parent = logging.getLogger("consentgate")

_GIVEN_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})


def root_handlers_only() -> bool:
    """The access logger's records would only reach the root handlers (nothing attached to
    it or its parents in between, and it propagates): then the direct write is equivalent."""
    return not log.handlers and log.propagate and not log.disabled and not _parent.handlers


def route_template(scope: Scope) -> str:
    """The template of the route that served ``scope`` (a mounted app's route prefixed with
    its mount path), or ``<unmatched>``."""
    route: Any = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    if not isinstance(path, str):
        return UNMATCHED
    # A mounted app's routes are relative to the mount: root_path grew by the mount path.
    mount = str(scope.get("root_path", ""))[len(str(scope.get("app_root_path", ""))) :]
    return f"{mount}{path}" if mount and not path.startswith(mount) else path


class AccessLog:
    def __init__(self, app: ASGIApp, metrics: Metrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        # A caller's id is kept only when it cannot be (or hide) an identifier.
        rid = (
            given
            if given is not None and _GIVEN_ID.match(given) and scrub(given) == given
            else uuid.uuid4().hex
        )
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 500  # what the client sees if the app dies before it answers

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())],
                }
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = route_template(scope)
            method = str(scope.get("method", ""))
            if self.metrics is not None:
                self.metrics.http_request(method, route, status, seconds)
            if method not in _METHODS:
                method = "OTHER"  # HTTP allows any token as a method: never log one
            ms = round(seconds * 1000, 3)
            if log.isEnabledFor(logging.INFO) and not (
                root_handlers_only() and write_access(method, route, status, ms, rid)
            ):
                # The record made directly: Logger.info would also look up the caller's
                # file and line (a stack walk per request) that no formatter here prints.
                log.handle(
                    log.makeRecord(
                        log.name,
                        logging.INFO,
                        __file__,
                        0,
                        "%s %s %d",
                        (method, route, status),
                        None,
                        extra={
                            "method": method,
                            "route": route,
                            "status": status,
                            "duration_ms": ms,
                        },
                    )
                )
            request_id.reset(token)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            try:
                return str(value.decode("latin-1"))
            except UnicodeDecodeError:
                return None
    return None


__all__ = ["UNMATCHED", "AccessLog", "route_template"]
