"""A lean ASGI front for the sandbox carrier's busiest route, RBM ``agentMessages.create``.

Through FastAPI a sandbox request costs ~0.4 ms of CPU (dependency solving, five layers of
middleware, response classes), several times the cost of the HTTP exchange itself; under a
campaign of thousands of messages a second the carrier, not consentgate, became the
bottleneck of the benchmark. This front answers that one route itself, with the same checks
and the same state (:meth:`_Carrier.rbm_create`), and hands every other request, and that
route too whenever fault injection or automatic receipts are on, to the FastAPI app
unchanged. The sandbox is a test carrier; the front changes no behaviour a client can see.
"""

from __future__ import annotations

import json
import logging
import re
from urllib.parse import parse_qs

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from consentgate.delivery.providers.base import E164
from consentgate.sandbox.app import google_error

log = logging.getLogger("consentgate.sandbox")
_CREATE = re.compile(r"^/rbm/v1/phones/([^/]+)/agentMessages$")


class RbmFastPath:
    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.carrier = app.state.carrier

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        carrier = self.carrier
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or carrier.faults is not None
            or carrier.auto_receipts
        ):
            await self.app(scope, receive, send)
            return
        path, root = scope["path"], scope.get("root_path", "")
        match = _CREATE.match(path[len(root) :] if root and path.startswith(root) else path)
        if match is None:
            await self.app(scope, receive, send)
            return
        raw = b""
        more = True
        while more:
            message = await receive()
            raw += message.get("body", b"")
            more = message.get("more_body", False)
        phone = match.group(1)
        auth = dict(scope["headers"]).get(b"authorization", b"")
        if not auth.startswith(b"Bearer "):
            status, answer = 401, google_error(401, "Request is missing a bearer token.")
        elif not E164.match(phone):
            status, answer = 400, google_error(400, "The phone number is not in E.164 format.")
        else:
            try:
                query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
                message_id = (query.get("messageId") or [None])[0]
                status, answer = carrier.rbm_create(phone, message_id, raw)
            except Exception as exc:  # as the app's _Contain: no traceback quoting a number
                log.error("sandbox: unexpected %s", type(exc).__name__)
                status, answer = 500, google_error(500, "sandbox error")
        body = json.dumps(answer, separators=(",", ":")).encode("utf-8")
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode("ascii")),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
