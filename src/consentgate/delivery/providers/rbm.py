"""The Google RBM (RCS Business Messaging) adapter: capability checks, agent messages,
revocation and webhook callbacks in RBM's REST wire format, plus the signing helpers the
sandbox carrier uses to speak the same format.

Wire format (Google RBM REST v1 reference: ``phones.getCapabilities``,
``phones.agentMessages.create`` / ``.delete``, ``UserEvent``, and the "Webhooks" guide):

- capabilities: ``GET {base}/v1/phones/{E.164}/capabilities?requestId={uuid}[&agentId=]`` →
  ``{"features": ["RICHCARD_STANDALONE", ...]}``; ``404 NOT_FOUND`` means the number cannot
  be reached over RBM (no RCS). RBM has no public flag for native end-to-end encryption:
  the sandbox reports it as an extra feature string, :data:`E2EE_FEATURE` (``E2EE_NATIVE``).
- batch capabilities: ``POST {base}/v1/users:batchGet`` ``{"users": [E.164, ...],
  "agentId"}`` (at most 10,000) → ``{"reachableUsers": [...]}``: RCS or not, no features. The
  sandbox adds ``consentgateNativeE2eeUsers`` (the reachable ones with native E2EE).
- send: ``POST {base}/v1/phones/{E.164}/agentMessages?messageId={id}[&agentId=]`` with
  ``{"contentMessage": {"text": ..., "suggestions": [{"action": {"openUrlAction": ...}}]}}``.
  The visible text is the teaser; a link travels as an "open URL" suggested action. A real
  RBM message never carries the envelope (the app fetches it); only with
  ``carry_envelope=True`` (the sandbox) does the adapter add the non-standard fields
  ``consentgateEnvelope`` (the envelope) and ``consentgateRequireE2ee`` (native E2EE was
  requested: the sandbox refuses the message if the device cannot honour it).
  RBM ignores a repeated ``messageId``; a ``409 ALREADY_EXISTS`` answer counts as accepted,
  so a retried send never delivers twice. RBM requires the id to be a UUID.
- revoke: ``DELETE {base}/v1/phones/{E.164}/agentMessages/{messageId}``: 200 revoked,
  404 already delivered. The number is part of the path, so ``revoke`` needs ``to``.
- callbacks: a Pub/Sub push envelope ``{"message": {"data": base64(event JSON), ...}}``.
  ``X-Goog-Signature`` is base64(HMAC-SHA512(key=clientToken, msg=base64-decoded data)).
  User events ``{"senderPhoneNumber", "eventType": DELIVERED|READ|IS_TYPING|UNSUBSCRIBE|
  SUBSCRIBE, "eventId", "messageId", "sendTime", "agentId"}``; user messages
  ``{"senderPhoneNumber", "messageId", "sendTime", "text" | "suggestionResponse", ...}``.
  DELIVERED/READ carry *our* ``messageId``; a user message carries the user's own id.

The adapter never logs, and its errors never contain the number (it sits in every URL).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode

import httpx

from consentgate.delivery.providers.base import (
    CallbackMalformed,
    CallbackUnauthenticated,
    Capabilities,
    OutboundMessage,
    ProviderEvent,
    SendReceipt,
    WireRequest,
    event_time,
    header,
    quiet_http_client_logs,
    raise_for_answer,
    raise_for_status,
    request,
    require_e164,
    response_json,
)
from consentgate.domain import strictjson
from consentgate.domain.clock import Clock, SystemClock

#: The sandbox's capability feature for native E2EE (RBM publishes no such feature).
E2EE_FEATURE = "E2EE_NATIVE"
#: Shown when an encrypted-mode message comes without a teaser of its own.
DEFAULT_TEASER = "You have a new secure message."
SIGNATURE_HEADER = "X-Goog-Signature"
#: Numbers per ``users:batchGet`` request (RBM's limit).
BATCH_GET_MAX = 10_000
_LINK_POSTBACK = "consentgate:open_link"

_EVENT_KINDS = {"DELIVERED": "delivered", "READ": "read", "UNSUBSCRIBE": "unsubscribe"}


# --- the wire format, shared with the sandbox --------------------------------------------------


def sign(client_token: str, data: bytes) -> str:
    """The ``X-Goog-Signature`` value for the decoded ``message.data`` bytes."""
    digest = hmac.new(client_token.encode("utf-8"), data, hashlib.sha512).digest()
    return base64.b64encode(digest).decode("ascii")


def callback_body(event: Mapping[str, Any], *, publish_time: str) -> tuple[bytes, bytes]:
    """Wrap a user event or message as RBM posts it: (body bytes, the event's data bytes).

    The data bytes are what :func:`sign` signs.
    """
    data = json.dumps(event, separators=(",", ":")).encode("utf-8")
    envelope = {
        "message": {
            "data": base64.b64encode(data).decode("ascii"),
            "messageId": uuid.uuid4().hex,
            "publishTime": publish_time,
        },
        "subscription": "projects/rbm-sandbox/subscriptions/consentgate",
    }
    return json.dumps(envelope, separators=(",", ":")).encode("utf-8"), data


def webhook_verification_secret(body: bytes, client_token: str) -> str | None:
    """RBM's webhook set-up check posts ``{"clientToken", "secret"}`` and expects the secret
    back as the 200 response body. Returns the secret when the token matches, else None."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # (deep nesting: RecursionError)
        return None
    if not isinstance(payload, dict) or set(payload) != {"clientToken", "secret"}:
        return None
    token, secret = payload["clientToken"], payload["secret"]
    if not isinstance(token, str) or not isinstance(secret, str):
        return None
    if not hmac.compare_digest(token.encode("utf-8"), client_token.encode("utf-8")):
        return None
    return secret


def _google_status(body: dict[str, Any]) -> object:
    return body["error"]["status"]


# --- the adapter -----------------------------------------------------------------------------


class RbmProvider:
    """RCS over Google RBM's REST API (or the sandbox carrier speaking it).

    ``base_url`` is the API root without the version (``https://rcsbusinessmessaging.
    googleapis.com``, or the sandbox's ``.../sandbox/rbm``). ``access_token`` is the OAuth
    bearer token, or a callable returning a fresh one per request. ``client_token`` is the
    webhook's clientToken, the key callbacks are signed with.
    """

    name = "rbm"

    def __init__(
        self,
        http: httpx.Client,
        *,
        base_url: str,
        client_token: str,
        access_token: str | Callable[[], str] | None = None,
        agent_id: str | None = None,
        carry_envelope: bool = False,
        clock: Clock | None = None,
    ) -> None:
        if not client_token:
            raise ValueError("rbm: a webhook client token is required to verify callbacks")
        quiet_http_client_logs()
        self._http = http
        self._base = base_url.rstrip("/")
        self._client_token = client_token
        self._access_token = access_token
        self._agent_id = agent_id
        self._carry_envelope = carry_envelope
        self._clock = clock or SystemClock()

    # -- requests --

    def _headers(self) -> dict[str, str]:
        token = self._access_token() if callable(self._access_token) else self._access_token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _params(self, **extra: str) -> dict[str, str]:
        return {**extra, **({"agentId": self._agent_id} if self._agent_id else {})}

    def _phone_url(self, phone: str, tail: str) -> str:
        return f"{self._base}/v1/phones/{require_e164(phone)}/{tail}"

    def capabilities(self, phone_e164: str) -> Capabilities:
        response = request(
            self._http,
            self.name,
            "GET",
            self._phone_url(phone_e164, "capabilities"),
            params=self._params(requestId=str(uuid.uuid4())),
            headers=self._headers(),
        )
        if response.status_code == 404 and _is_google_status(response, "NOT_FOUND"):
            return Capabilities(rcs=False, native_e2ee=False)
        raise_for_status(response, self.name, _google_status)
        features = response_json(response, self.name).get("features", [])
        if not isinstance(features, list):
            features = []
        return Capabilities(rcs=True, native_e2ee=E2EE_FEATURE in features)

    def capabilities_many(self, phones: Sequence[str]) -> dict[str, Capabilities]:
        """RBM's ``users:batchGet``: which of the numbers are reachable over RBM (RCS), in
        requests of at most :data:`BATCH_GET_MAX`. The sandbox also lists those with native
        E2EE (``consentgateNativeE2eeUsers``); without that list no number has it."""
        found: dict[str, Capabilities] = {}
        for start in range(0, len(phones), BATCH_GET_MAX):
            chunk = [require_e164(p) for p in phones[start : start + BATCH_GET_MAX]]
            body = {"users": chunk, **({"agentId": self._agent_id} if self._agent_id else {})}
            response = request(
                self._http,
                self.name,
                "POST",
                f"{self._base}/v1/users:batchGet",
                json=body,
                headers=self._headers(),
            )
            raise_for_status(response, self.name, _google_status)
            answer = response_json(response, self.name)
            reachable = _str_set(answer.get("reachableUsers"))
            native = _str_set(answer.get("consentgateNativeE2eeUsers")) & reachable
            for phone in chunk:
                found[phone] = Capabilities(rcs=phone in reachable, native_e2ee=phone in native)
        return found

    def send(self, message: OutboundMessage) -> SendReceipt:
        wire = self.send_request(message)
        response = request(
            self._http, self.name, wire.method, wire.url, content=wire.body, headers=wire.headers
        )
        return self.send_answer(message, response.status_code, response.content)

    def send_request(self, message: OutboundMessage) -> WireRequest:
        """``agentMessages.create`` for ``message``, as bytes (see :meth:`send`)."""
        if message.channel != "rcs":
            raise ValueError(f"rbm sends RCS messages, not {message.channel!r}")
        content: dict[str, Any] = {
            "text": message.text if message.text is not None else DEFAULT_TEASER
        }
        if message.link is not None:
            action = {"text": "Open", "postbackData": _LINK_POSTBACK}
            content["suggestions"] = [
                {"action": {**action, "openUrlAction": {"url": message.link}}}
            ]
        body: dict[str, Any] = {"contentMessage": content}
        if self._carry_envelope:
            if message.envelope is not None:
                body["consentgateEnvelope"] = message.envelope
            if message.e2ee:
                body["consentgateRequireE2ee"] = True
        query = urlencode(self._params(messageId=message.message_id))
        return WireRequest(
            "POST",
            f"{self._phone_url(message.to, 'agentMessages')}?{query}",
            json.dumps(body, separators=(",", ":")).encode("utf-8"),
            {**self._headers(), "Content-Type": "application/json"},
        )

    def send_answer(self, message: OutboundMessage, status: int, body: bytes) -> SendReceipt:
        if status == 409 and _google_status_is(body, "ALREADY_EXISTS"):
            # Sent before under this id (a retry after a lost answer): the effect happened once.
            return SendReceipt(provider_message_id=message.message_id, accepted=True)
        raise_for_answer(status, body, self.name, _google_status)
        return SendReceipt(provider_message_id=message.message_id, accepted=True)

    def revoke(self, provider_message_id: str, *, to: str | None = None) -> bool:
        if to is None:
            raise ValueError("rbm: revoking needs the recipient number (to=): it is in the path")
        response = request(
            self._http,
            self.name,
            "DELETE",
            self._phone_url(to, f"agentMessages/{quote(provider_message_id, safe='')}"),
            params=self._params(),
            headers=self._headers(),
        )
        if response.status_code == 404 and _is_google_status(response, "NOT_FOUND"):
            return False  # already delivered (or never sent): too late to revoke
        raise_for_status(response, self.name, _google_status)
        return True

    # -- callbacks --

    def parse_callback(self, headers: Mapping[str, str], body: bytes) -> list[ProviderEvent]:
        signature = header(headers, SIGNATURE_HEADER)
        if not signature:
            raise CallbackUnauthenticated(f"rbm: no {SIGNATURE_HEADER} header")
        try:
            outer = json.loads(body)
            data = base64.b64decode(outer["message"]["data"], validate=True)
        except (
            ValueError,
            UnicodeDecodeError,
            KeyError,
            TypeError,
            binascii.Error,
            RecursionError,
        ):
            raise CallbackUnauthenticated("rbm: not a signed RBM callback") from None
        expected = sign(self._client_token, data).encode("ascii")
        if not hmac.compare_digest(expected, signature.encode("utf-8", "replace")):
            raise CallbackUnauthenticated("rbm: callback signature does not verify")
        try:
            event = strictjson.loads(data)
        except strictjson.NotJson:
            raise CallbackMalformed("rbm: callback data is not JSON") from None
        if not isinstance(event, dict):
            raise CallbackMalformed("rbm: callback data is not a JSON object")
        return self._events(event)

    def _events(self, event: dict[str, Any]) -> list[ProviderEvent]:
        sender = _opt_str(event, "senderPhoneNumber")
        message_id = _opt_str(event, "messageId")
        at = event_time(event.get("sendTime"), self._clock)
        if "eventType" in event:
            kind = _EVENT_KINDS.get(str(event["eventType"]))
            if kind == "delivered":
                return [ProviderEvent("delivered", message_id, None, None, at)]
            if kind == "read":
                return [ProviderEvent("read", message_id, None, None, at)]
            if kind == "unsubscribe":
                return [ProviderEvent("unsubscribe", message_id, sender, None, at)]
            return []  # IS_TYPING, SUBSCRIBE and future types carry nothing we act on
        text = _opt_str(event, "text")
        if text is None and isinstance(event.get("suggestionResponse"), dict):
            reply = event["suggestionResponse"]
            text = _opt_str(reply, "postbackData") or _opt_str(reply, "text")
        if text is None:
            return []  # files, locations, server events
        return [ProviderEvent("inbound", message_id, sender, text, at)]


def _opt_str(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise CallbackMalformed(f"rbm: callback field {key} is not a string", field=key)
    return value


def _is_google_status(response: httpx.Response, status: str) -> bool:
    """True when the body is a Google API error with this canonical status (a 404 from a
    mistyped base URL is not an answer about the number)."""
    return _google_status_is(response.content, status)


def _google_status_is(content: bytes, status: str) -> bool:
    try:
        body = json.loads(content)
        return isinstance(body, dict) and body["error"]["status"] == status
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        return False


def _str_set(value: object) -> set[str]:
    return {v for v in value if isinstance(v, str)} if isinstance(value, list) else set()


__all__ = [
    "DEFAULT_TEASER",
    "E2EE_FEATURE",
    "SIGNATURE_HEADER",
    "RbmProvider",
    "callback_body",
    "sign",
    "webhook_verification_secret",
]
