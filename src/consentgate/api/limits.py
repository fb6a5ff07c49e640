"""A pure ASGI middleware that refuses oversized bodies early (413), before they are read
into memory: by Content-Length when given, else by counting the streamed chunks.

Past the limit, reading the body raises inside the app. Code that reads it directly lets
that propagate; FastAPI's body parsing (the sandbox's models) catches it and answers its own
400 instead. Either way the answer is 413: once the limit is passed, whatever response the
app starts is replaced by it."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from consentgate.api.problems import PROBLEM_JSON, send_answer

_PROBLEM = PROBLEM_JSON.encode()


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = self.max_bytes + 1
            if declared > self.max_bytes:
                await self._reject(scope, send)
                return
        seen = 0
        too_large = rejected = started = False

        async def limited() -> Message:
            nonlocal seen, too_large
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    too_large = True
                    raise _TooLarge
            return message

        async def guarded(message: Message) -> None:
            nonlocal rejected, started
            if not too_large or started:
                started = started or message["type"] == "http.response.start"
                await send(message)
            elif not rejected:  # the app answered the failed read itself: answer 413
                rejected = True
                await self._reject(scope, send)

        try:
            await self.app(scope, limited, guarded)
        except _TooLarge:
            if not rejected and not started:
                rejected = True
                await self._reject(scope, send)

    async def _reject(self, scope: Scope, send: Send) -> None:
        body: dict[str, Any] = {
            "type": "/problems/payload-too-large",
            "title": "Payload too large",
            "status": 413,
            "detail": f"the request body exceeds {self.max_bytes} bytes",
            "instance": scope.get("path", ""),
        }
        headers = [(b"content-type", _PROBLEM), (b"connection", b"close")]
        await send_answer(send, 413, json.dumps(body).encode(), headers)


class _TooLarge(Exception):
    pass


class NoNul:
    """Refuses (400) a path or query that carries a NUL character (``%00``). No id or
    parameter here holds one, and PostgreSQL's text cannot store or even compare it: the
    query would fail inside the store (a 500) instead of at the door. (Bodies are checked by
    :mod:`consentgate.domain.strictjson`; HTTP headers cannot carry NUL.)"""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (
            "\x00" in scope["path"] or b"%00" in scope.get("query_string", b"")
        ):
            payload = json.dumps(
                {
                    "type": "/problems/malformed-request",
                    "title": "Malformed request",
                    "status": 400,
                    "detail": "the path or query holds a NUL character",
                }
            ).encode()
            await send_answer(send, 400, payload, [(b"content-type", _PROBLEM)])
            return
        await self.app(scope, receive, send)
