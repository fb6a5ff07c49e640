"""The sandbox carrier: a test-only FastAPI sub-application that plays the messaging
providers over real HTTP, so consentgate's real adapters can be exercised end to end without
a carrier account. The main app mounts it at ``/sandbox``; every route below is relative.

- RCS in Google RBM's REST format under ``/rbm/v1/phones/...`` (capabilities, agent
  messages, revocation) and ``/rbm/v1/users:batchGet`` (batch capabilities), SMS in
  Twilio's Messages API format under ``/twilio/2010-04-01/Accounts/{sid}/Messages.json``,
  in-app push under ``/push/v1/messages`` (see the adapters in
  :mod:`consentgate.delivery.providers` for the formats).
- A device population (``PUT /devices``): listed numbers with ``rcs`` are reachable over RCS,
  ``native_e2ee`` ones also report the ``E2EE_NATIVE`` feature; anything else has no RCS.
- What was "delivered" (``GET /messages``, ``DELETE /messages``), user replies and
  unsubscribes sent to consentgate's callback URL in RBM's signed format (``POST /inbound``),
  delivery/read receipts (``POST /deliveries/flush``, or ``auto_receipts``), and fault
  injection (``POST /faults``, ``DELETE /faults``) on the provider-facing routes.

Everything lives in process memory and nothing is logged: the messages hold phone numbers.
RBM URL paths contain numbers too, so whoever serves this app must keep them out of its
access log (:func:`redact_phone_numbers_in_access_log`). Not for production.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
import random
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, Literal
from urllib.parse import urlencode

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from consentgate.api.problems import problem, validation_problem
from consentgate.delivery.providers import rbm, sms
from consentgate.delivery.providers.base import E164
from consentgate.domain.clock import Clock, SystemClock
from consentgate.domain.timeutil import format_rfc3339

log = logging.getLogger("consentgate.sandbox")

Wire = Literal["rbm", "twilio", "push"]
AGENT_ID = "consentgate-sandbox@rbm.goog"
_E164 = E164.pattern
_FEATURES = [
    "ACTION_CREATE_CALENDAR_EVENT",
    "ACTION_DIAL",
    "ACTION_OPEN_URL",
    "ACTION_SHARE_LOCATION",
    "ACTION_VIEW_LOCATION",
    "REVOCATION",
    "RICHCARD_CAROUSEL",
    "RICHCARD_STANDALONE",
]
_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_URL = re.compile(r"https?://\S+")


# --- inputs ------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class DeviceIn(_Strict):
    phone: str = Field(pattern=_E164)
    rcs: bool
    native_e2ee: bool = False

    @model_validator(mode="after")
    def _e2ee_needs_rcs(self) -> DeviceIn:
        if self.native_e2ee and not self.rcs:
            raise ValueError("native_e2ee is an RCS feature: it needs rcs")
        return self


class DevicesIn(_Strict):
    devices: list[DeviceIn] = Field(max_length=100_000)

    @model_validator(mode="after")
    def _unique(self) -> DevicesIn:
        if len({d.phone for d in self.devices}) != len(self.devices):
            raise ValueError("a phone number is listed twice")
        return self


class FaultsIn(_Strict):
    error_rate: float = Field(0.0, ge=0, le=1)
    status: int = Field(503, ge=400, le=599)
    latency_ms: int = Field(0, ge=0, le=60_000)
    timeout_rate: float = Field(0.0, ge=0, le=1)
    hang_ms: int = Field(30_000, ge=0, le=600_000, description="how long a 'timeout' hangs")
    seed: int | None = Field(None, description="makes the error/timeout draws repeatable")


class InboundIn(_Strict):
    sender: str = Field(alias="from", pattern=_E164)
    text: str | None = Field(None, min_length=1, max_length=8192)
    event: Literal["UNSUBSCRIBE", "SUBSCRIBE"] | None = None

    @model_validator(mode="after")
    def _one(self) -> InboundIn:
        if (self.text is None) == (self.event is None):
            raise ValueError("give exactly one of text and event")
        return self


class _RbmMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    content: dict[str, Any] = Field(alias="contentMessage")
    envelope: dict[str, Any] | None = Field(None, alias="consentgateEnvelope")
    require_e2ee: bool = Field(False, alias="consentgateRequireE2ee")


class _BatchGetIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    users: list[str] = Field(max_length=10_000)
    agent_id: str | None = Field(None, alias="agentId")


class PushIn(_Strict):
    message_id: str = Field(min_length=1, max_length=200)
    device_kid: str = Field(min_length=1, max_length=200)
    envelope: dict[str, Any]
    text: str | None = Field(None, max_length=8192)


# --- state -------------------------------------------------------------------------------------


@dataclass
class _Message:
    to: str | None = field(repr=False)
    channel: Literal["rcs", "sms", "push"]
    e2ee: bool
    text: str | None = field(repr=False)
    envelope: dict[str, Any] | None = field(repr=False)
    link: str | None = field(repr=False)
    provider_message_id: str
    received_at: datetime
    device_kid: str | None = None
    status: str = "accepted"  # accepted → delivered → read, or revoked
    status_callback: str | None = field(default=None, repr=False)

    def public(self) -> dict[str, Any]:
        return {
            "to": self.to,
            "channel": self.channel,
            "e2ee": self.e2ee,
            "text": self.text,
            "envelope": self.envelope,
            "link": self.link,
            "provider_message_id": self.provider_message_id,
            # Always six fractional digits (format_rfc3339 drops a zero fraction): tests
            # order what the carrier received against acknowledgements by this instant.
            "received_at": self.received_at.astimezone(UTC)
            .isoformat(timespec="microseconds")
            .replace("+00:00", "Z"),
            "device_kid": self.device_kid,
            "status": self.status,
        }


class _Carrier:
    """The sandbox's memory and its outbound calls. One lock guards all of it."""

    def __init__(
        self,
        callback_url: str | None,
        rbm_secret: str,
        twilio_token: str,
        http: httpx.Client | None,
        clock: Clock,
        auto_receipts: bool,
    ) -> None:
        self.callback_url = callback_url
        self.rbm_secret = rbm_secret
        self.twilio_token = twilio_token
        self.http = http
        self.clock = clock
        self.auto_receipts = auto_receipts
        self.lock = threading.Lock()
        self.devices: dict[str, DeviceIn] = {}
        self.messages: dict[tuple[str, str], _Message] = {}
        self.faults: FaultsIn | None = None
        self.rng = random.Random()  # noqa: S311 - fault injection, not security
        self.fault_generation = 0

    # -- faults --

    async def fault(self, wire: Wire) -> Response | None:
        with self.lock:
            spec, generation = self.faults, self.fault_generation
            if spec is None:
                return None
            hang, fail = self.rng.random() < spec.timeout_rate, self.rng.random() < spec.error_rate
        if spec.latency_ms:
            await asyncio.sleep(spec.latency_ms / 1000)
        if hang:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + spec.hang_ms / 1000
            # Polled rather than an asyncio.Event, so DELETE /faults releases hung requests
            # whichever event loop serves them.
            while loop.time() < deadline and self.fault_generation == generation:
                await asyncio.sleep(0.02)
            return wire_error(wire, 504, "injected timeout")
        return wire_error(wire, spec.status, "injected fault") if fail else None

    # -- outbound calls (run in a worker thread: the client is synchronous) --

    def _post(self, url: str, content: bytes, headers: dict[str, str]) -> int | None:
        if self.http is None:
            return None
        try:
            return self.http.post(url, content=content, headers=headers).status_code
        except httpx.HTTPError as exc:
            log.warning("sandbox: callback failed (%s)", type(exc).__name__)
            return None

    def post_rbm_event(self, event: dict[str, Any]) -> int | None:
        if self.callback_url is None:
            return None
        body, data = rbm.callback_body(event, publish_time=format_rfc3339(self.clock.now()))
        headers = {
            "Content-Type": "application/json",
            rbm.SIGNATURE_HEADER: rbm.sign(self.rbm_secret, data),
        }
        return self._post(self.callback_url, body, headers)

    def post_twilio_status(self, url: str, params: dict[str, str]) -> int | None:
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            sms.SIGNATURE_HEADER: sms.signature(self.twilio_token, url, params.items()),
        }
        return self._post(url, urlencode(params).encode("ascii"), headers)

    def deliver(self, keys: list[tuple[str, str]] | None, read: bool) -> dict[str, int]:
        """Mark accepted messages delivered (and read), then send their receipts."""
        with self.lock:
            chosen = [
                m
                for k, m in self.messages.items()
                if m.status == "accepted" and (keys is None or k in keys)
            ]
            for m in chosen:
                m.status = "read" if read else "delivered"
        sent = failed = 0
        for m in chosen:
            for state in ("delivered", "read") if read else ("delivered",):
                outcome = self._receipt(m, state)
                if outcome is None:
                    continue
                sent, failed = (sent + 1, failed) if outcome < 300 else (sent, failed + 1)
        return {"delivered": len(chosen), "callbacks_sent": sent, "callbacks_failed": failed}

    def _receipt(self, m: _Message, state: str) -> int | None:
        now = format_rfc3339(self.clock.now())
        if m.channel == "rcs" and self.callback_url is not None and self.http is not None:
            event = {
                "senderPhoneNumber": m.to,
                "eventType": state.upper(),
                "eventId": uuid.uuid4().hex,
                "messageId": m.provider_message_id,
                "sendTime": now,
                "agentId": AGENT_ID,
            }
            return self.post_rbm_event(event) or 599
        if m.channel == "sms" and m.status_callback is not None and self.http is not None:
            params = {
                "AccountSid": "ACsandbox",
                "MessageSid": m.provider_message_id,
                "SmsSid": m.provider_message_id,
                "MessageStatus": state,
                "To": m.to or "",
            }
            return self.post_twilio_status(m.status_callback, params) or 599
        return None

    def rbm_create(
        self, phone: str, message_id: str | None, raw: bytes
    ) -> tuple[int, dict[str, Any]]:
        """``agentMessages.create`` once authenticated: (HTTP status, JSON answer)."""
        if not message_id:
            return 400, google_error(400, "messageId is required.")
        try:
            body = _RbmMessageIn.model_validate_json(raw)
        except ValidationError:
            return 400, google_error(400, "Invalid JSON payload.")
        text = body.content.get("text")
        if not isinstance(text, str) or not text:
            return 400, google_error(400, "contentMessage.text is required by the sandbox.")
        with self.lock:
            device = self.devices.get(phone)
        if device is None or not device.rcs:
            return 404, google_error(404, "Requested entity was not found.")
        if body.require_e2ee and not device.native_e2ee:
            return 400, google_error(400, "Native E2EE is unavailable.", "FAILED_PRECONDITION")
        now = self.clock.now()
        message = _Message(
            to=phone,
            channel="rcs",
            e2ee=device.native_e2ee,
            text=text,
            envelope=body.envelope,
            link=_suggested_url(body.content),
            provider_message_id=message_id,
            received_at=now,
        )
        if not self.record(("rcs", message_id), message):
            return 409, google_error(409, "Message with this id already exists.")
        return 200, {
            "name": f"phones/{phone}/agentMessages/{message_id}",
            "sendTime": format_rfc3339(now),
            "contentMessage": body.content,
        }

    def record(self, key: tuple[str, str], message: _Message) -> bool:
        """Store a message; False if one with this key exists (an idempotent replay)."""
        with self.lock:
            if key in self.messages:
                return False
            self.messages[key] = message
            return True

    def after_accept(self, key: tuple[str, str]) -> BackgroundTask | None:
        if not self.auto_receipts:
            return None
        return BackgroundTask(self.deliver, [key], False)


# --- errors in each wire format ------------------------------------------------------------------


def google_error(status: int, message: str, google: str | None = None) -> dict[str, Any]:
    """A Google API error body (RBM's)."""
    canonical = google or _GOOGLE_STATUS.get(status, "UNKNOWN")
    return {"error": {"code": status, "message": message, "status": canonical}}


def wire_error(wire: Wire, status: int, message: str, google: str | None = None) -> Response:
    if wire == "rbm":
        return JSONResponse(google_error(status, message, google), status_code=status)
    if wire == "twilio":
        code = {401: 20003, 404: 20404, 429: 20429}.get(status, 20500 if status >= 500 else 20001)
        return twilio_error(status, code, message)
    return problem(status, "sandbox-fault", "Sandbox fault", message)


def twilio_error(status: int, code: int, message: str) -> JSONResponse:
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return JSONResponse(body, status_code=status)


class _Contain:
    """Turns an unexpected exception into a 500 problem instead of letting it reach the
    server's error log, whose traceback could quote a number from a path or a body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            log.error("sandbox: unexpected %s", type(exc).__name__)
            if not started:
                response = problem(500, "internal", "Internal error", "sandbox error")
                await response(scope, receive, send)


# --- the app -----------------------------------------------------------------------------------


def create_sandbox(
    callback_url: str | None,
    rbm_secret: str,
    twilio_token: str,
    *,
    http: httpx.Client | None = None,
    clock: Clock | None = None,
    auto_receipts: bool = False,
) -> FastAPI:
    """The sandbox carrier as an ASGI app (mount it at ``/sandbox``).

    ``callback_url`` is where RBM-format callbacks go (consentgate's
    ``/v1/providers/rbm/callbacks``), signed with ``rbm_secret`` (the RBM adapter's
    ``client_token``). ``twilio_token`` is the Twilio auth token: the SMS routes check it
    (basic auth) and sign status callbacks with it. ``http`` sends the callbacks; without
    it (or without ``callback_url``) nothing is called back. ``auto_receipts`` sends a
    DELIVERED receipt right after each accepted RCS/SMS message; off by default, so tests
    decide when receipts happen (``POST /deliveries/flush``).
    """
    carrier = _Carrier(
        callback_url, rbm_secret, twilio_token, http, clock or SystemClock(), auto_receipts
    )
    app = FastAPI(
        title="consentgate sandbox carrier",
        description="Test carrier speaking RBM, Twilio and push wire formats. Not for production.",
    )
    app.state.carrier = carrier
    app.add_middleware(_Contain)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        return validation_problem(exc.errors(), "")

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        code = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "bad-request")
        return problem(exc.status_code, code, code.replace("-", " ").capitalize(), str(exc.detail))

    _control_routes(app, carrier)
    _rbm_routes(app, carrier)
    _twilio_routes(app, carrier)
    _push_routes(app, carrier)
    return app


def _control_routes(app: FastAPI, carrier: _Carrier) -> None:
    @app.put("/devices")
    def put_devices(body: DevicesIn) -> dict[str, int]:
        """Replace the device population; numbers not listed have no RCS."""
        with carrier.lock:
            carrier.devices = {d.phone: d for d in body.devices}
        return {"devices": len(body.devices)}

    @app.get("/devices")
    def get_devices() -> dict[str, Any]:
        with carrier.lock:
            return {"devices": [d.model_dump() for d in carrier.devices.values()]}

    @app.get("/messages")
    def get_messages() -> dict[str, Any]:
        with carrier.lock:
            return {"messages": [m.public() for m in carrier.messages.values()]}

    @app.delete("/messages", status_code=204)
    def delete_messages() -> Response:
        with carrier.lock:
            carrier.messages.clear()
        return Response(status_code=204)

    @app.post("/faults")
    def post_faults(body: FaultsIn) -> dict[str, Any]:
        with carrier.lock:
            carrier.faults = body
            carrier.rng = random.Random(body.seed)  # noqa: S311 - fault injection
            carrier.fault_generation += 1
        return {"faults": body.model_dump()}

    @app.delete("/faults", status_code=204)
    def delete_faults() -> Response:
        with carrier.lock:
            carrier.faults = None
            carrier.fault_generation += 1  # releases requests hanging on an injected timeout
        return Response(status_code=204)

    @app.post("/inbound")
    async def post_inbound(body: InboundIn) -> Response:
        """A user's reply (or unsubscribe) to consentgate's callback URL, as RBM sends it."""
        if carrier.callback_url is None or carrier.http is None:
            return problem(409, "conflict", "No callback", "no callback URL or client configured")
        event: dict[str, Any] = {
            "senderPhoneNumber": body.sender,
            "sendTime": format_rfc3339(carrier.clock.now()),
            "agentId": AGENT_ID,
        }
        if body.event is not None:
            event.update(eventType=body.event, eventId=uuid.uuid4().hex)
        else:
            event.update(messageId=uuid.uuid4().hex, text=body.text)
        status = await run_in_threadpool(carrier.post_rbm_event, event)
        if status is None or status >= 300:
            detail = "the callback URL could not be reached" if status is None else "non-2xx"
            extra = {"callback_status": status}
            return problem(502, "callback-failed", "Callback failed", detail, extra=extra)
        return JSONResponse({"callback_status": status})

    @app.post("/deliveries/flush")
    async def flush(read: bool = False) -> dict[str, int]:
        """Deliver every accepted message now and send the receipts (and READ if asked)."""
        return await run_in_threadpool(carrier.deliver, None, read)


def _rbm_routes(app: FastAPI, carrier: _Carrier) -> None:
    def check(request: Request, phone: str | None) -> Response | None:
        if not (request.headers.get("authorization") or "").startswith("Bearer "):
            return wire_error("rbm", 401, "Request is missing a bearer token.")
        if phone is not None and not E164.match(phone):
            return wire_error("rbm", 400, "The phone number is not in E.164 format.")
        return None

    @app.get("/rbm/v1/phones/{phone}/capabilities")
    async def capabilities(request: Request, phone: str) -> Response:
        refusal = await carrier.fault("rbm") or check(request, phone)
        if refusal is not None:
            return refusal
        with carrier.lock:
            device = carrier.devices.get(phone)
        if device is None or not device.rcs:
            return wire_error("rbm", 404, "Requested entity was not found.")
        features = _FEATURES + ([rbm.E2EE_FEATURE] if device.native_e2ee else [])
        return JSONResponse({"features": features})

    @app.post("/rbm/v1/users:batchGet")
    async def batch_get(request: Request) -> Response:
        """Which of the numbers are reachable over RCS (and, as a sandbox extension, which of
        those have native E2EE)."""
        refusal = await carrier.fault("rbm") or check(request, None)
        if refusal is not None:
            return refusal
        try:
            body = _BatchGetIn.model_validate_json(await request.body())
        except ValidationError:
            return wire_error("rbm", 400, "Invalid JSON payload.")
        with carrier.lock:
            found = [carrier.devices.get(p) for p in body.users]
        reachable = [d for d in found if d is not None and d.rcs]
        answer = {
            "reachableUsers": [d.phone for d in reachable],
            "totalRandomSampleUserCount": 0,
            "reachableRandomSampleUserCount": 0,
            "consentgateNativeE2eeUsers": [d.phone for d in reachable if d.native_e2ee],
        }
        return JSONResponse(answer)

    @app.post("/rbm/v1/phones/{phone}/agentMessages")
    async def create(request: Request, phone: str) -> Response:
        refusal = await carrier.fault("rbm") or check(request, phone)
        if refusal is not None:
            return refusal
        message_id = request.query_params.get("messageId")
        status, answer = carrier.rbm_create(phone, message_id, await request.body())
        if status != 200:
            return JSONResponse(answer, status_code=status)
        return JSONResponse(answer, background=carrier.after_accept(("rcs", str(message_id))))

    @app.delete("/rbm/v1/phones/{phone}/agentMessages/{message_id}")
    async def revoke(request: Request, phone: str, message_id: str) -> Response:
        refusal = await carrier.fault("rbm") or check(request, phone)
        if refusal is not None:
            return refusal
        with carrier.lock:
            message = carrier.messages.get(("rcs", message_id))
            if message is None or message.to != phone or message.status != "accepted":
                return wire_error("rbm", 404, "Requested entity was not found.")
            message.status = "revoked"
        return JSONResponse({})


def _suggested_url(content: dict[str, Any]) -> str | None:
    suggestions = content.get("suggestions")
    for suggestion in suggestions if isinstance(suggestions, list) else []:
        action = suggestion.get("action") if isinstance(suggestion, dict) else None
        target = action.get("openUrlAction") if isinstance(action, dict) else None
        if isinstance(target, dict) and isinstance(target.get("url"), str):
            return str(target["url"])
    return None


def _twilio_routes(app: FastAPI, carrier: _Carrier) -> None:
    @app.post("/twilio/2010-04-01/Accounts/{sid}/Messages.json")
    async def create(request: Request, sid: str) -> Response:
        refusal = await carrier.fault("twilio")
        if refusal is not None:
            return refusal
        if not _basic_auth_ok(request.headers.get("authorization"), sid, carrier.twilio_token):
            return twilio_error(401, 20003, "Authenticate")
        try:
            form = dict(sms.parse_form(await request.body()))
        except (ValueError, UnicodeDecodeError):
            return twilio_error(400, 20001, "The request body is not form-encoded.")
        to, body = form.get("To", ""), form.get("Body", "")
        if not E164.match(to):
            return twilio_error(400, 21211, "Invalid 'To' Phone Number")
        if not form.get("From") and not form.get("MessagingServiceSid"):
            return twilio_error(400, 21603, "A 'From' phone number is required.")
        if not body:
            return twilio_error(400, 21602, "Message body is required.")
        callback = form.get("StatusCallback")
        if callback is not None and not _URL.fullmatch(callback):
            return twilio_error(400, 21609, "Invalid StatusCallback URL.")
        now, message_sid = carrier.clock.now(), "SM" + uuid.uuid4().hex
        link = _URL.search(body)
        carrier.record(
            ("sms", message_sid),
            _Message(
                to=to,
                channel="sms",
                e2ee=False,
                text=body,
                envelope=None,
                link=link.group(0) if link else None,
                provider_message_id=message_sid,
                received_at=now,
                status_callback=callback,
            ),
        )
        answer = {
            "sid": message_sid,
            "account_sid": sid,
            "messaging_service_sid": form.get("MessagingServiceSid"),
            "from": form.get("From"),
            "to": to,
            "body": body,
            "status": "queued",
            "direction": "outbound-api",
            "api_version": sms.API_VERSION,
            "date_created": format_datetime(now, usegmt=True),
            "error_code": None,
            "error_message": None,
            "uri": f"/{sms.API_VERSION}/Accounts/{sid}/Messages/{message_sid}.json",
        }
        background = carrier.after_accept(("sms", message_sid))
        return JSONResponse(answer, status_code=201, background=background)


def _basic_auth_ok(value: str | None, sid: str, token: str) -> bool:
    if not value or not value.startswith("Basic "):
        return False
    try:
        user, _, password = base64.b64decode(value[6:], validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return user == sid and hmac.compare_digest(password.encode(), token.encode())


def _push_routes(app: FastAPI, carrier: _Carrier) -> None:
    @app.post("/push/v1/messages", status_code=201)
    async def create(body: PushIn) -> Response:
        refusal = await carrier.fault("push")
        if refusal is not None:
            return refusal
        message = _Message(
            to=None,  # push reaches a device by its key id; it never needs the number
            channel="push",
            e2ee=False,
            text=body.text,
            envelope=body.envelope,
            link=None,
            provider_message_id=body.message_id,
            received_at=carrier.clock.now(),
            device_kid=body.device_kid,
        )
        if not carrier.record(("push", body.message_id), message):
            return problem(409, "conflict", "Conflict", "a message with this id exists")
        return JSONResponse({"message_id": body.message_id, "status": "accepted"}, 201)

    @app.delete("/push/v1/messages/{message_id}")
    async def revoke(message_id: str) -> Response:
        refusal = await carrier.fault("push")
        if refusal is not None:
            return refusal
        with carrier.lock:
            message = carrier.messages.get(("push", message_id))
            if message is None or message.status != "accepted":
                return problem(404, "not-found", "Not found", "no undelivered message")
            message.status = "revoked"
        return JSONResponse({"message_id": message_id, "status": "revoked"})


# --- logging -----------------------------------------------------------------------------------

_PHONE_IN_PATH = re.compile(r"/phones/[^/?\s]+")
_PHONE = re.compile(r"(?:\+|%2[Bb])\d{6,15}")


def _redact(value: str) -> str:
    return _PHONE.sub("+<redacted>", _PHONE_IN_PATH.sub("/phones/<redacted>", value))


class PhoneRedactingFilter(logging.Filter):
    """Rewrites phone numbers out of a log record's message and string arguments (uvicorn's
    access log passes the request path as an argument)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = _redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redact(a) if isinstance(a, str) else a for a in record.args)
        return True


def redact_phone_numbers_in_access_log(logger_name: str = "uvicorn.access") -> None:
    """Install :class:`PhoneRedactingFilter` on the server's access logger (idempotent).

    Call it before serving an app that mounts the sandbox with the access log on: RBM
    routes carry the number in the path. ``logging.config.dictConfig`` (which uvicorn runs
    at start-up) keeps filters already on a logger.
    """
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, PhoneRedactingFilter) for f in logger.filters):
        logger.addFilter(PhoneRedactingFilter())
