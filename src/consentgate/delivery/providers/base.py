"""The provider seam: what the dispatch worker asks of a messaging provider (RBM-style RCS,
Twilio-style SMS, in-app push), the plain data that crosses it, the errors it raises, and an
in-memory :class:`FakeProvider` for tests. Adapters live beside it (``rbm``, ``sms``,
``push``); each takes an injected ``httpx.Client`` (timeouts and transport come from the
client) and never builds one itself.

Privacy: the recipient's number lives in :class:`OutboundMessage` and :class:`ProviderEvent`
only in memory; their ``repr`` hides it (and the message content). Error details name the
provider, the HTTP status and the provider's machine code, never a number or a provider's
free-text message (Twilio's messages quote the number). RBM puts the number in URL paths,
so :func:`quiet_http_client_logs` keeps httpx from logging request URLs at INFO; every
adapter calls it when it is built.

Errors::

    ConsentGateError
    ├── ProviderError
    │   ├── ProviderRejected       the provider said no (HTTP 4xx): do not retry
    │   └── ProviderUnavailable    5xx, 429, timeout, connection error: retry later
    └── Unauthenticated
        └── CallbackUnauthenticated  a callback whose signature does not verify
    InvalidInput
        └── CallbackMalformed        an authenticated callback we cannot read
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

import httpx

from consentgate.domain.clock import Clock, SystemClock
from consentgate.domain.timeutil import parse_rfc3339
from consentgate.errors import ConsentGateError, InvalidInput, Unauthenticated

Channel = Literal["rcs", "sms", "push"]
EventKind = Literal["delivered", "read", "failed", "inbound", "unsubscribe"]

E164 = re.compile(r"^\+[1-9]\d{1,14}$")


# --- data ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the provider reports for a number: RCS reachable, native E2EE available."""

    rcs: bool
    native_e2ee: bool


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """One message for one recipient.

    ``message_id`` is ours and doubles as the provider idempotency key (RBM requires a
    UUID). ``text`` is what the recipient sees; for the encrypted modes it is a
    non-sensitive teaser, or None for the adapter's default teaser. ``envelope`` is the HPKE
    envelope JSON; ``device_kid`` names the device key it is sealed to (the push channel
    addresses the device by it). ``e2ee`` asks for the channel's native end-to-end
    encryption.
    """

    message_id: str
    to: str = field(repr=False)
    channel: Channel
    text: str | None = field(default=None, repr=False)
    envelope: dict[str, Any] | None = field(default=None, repr=False)
    link: str | None = field(default=None, repr=False)
    e2ee: bool = False
    device_kid: str | None = None


@dataclass(frozen=True, slots=True)
class WireRequest:
    """One HTTP request to a provider, built without sending it (the batched dispatcher sends
    many at once over its own keep-alive connections). ``headers`` include authentication."""

    method: str
    url: str = field(repr=False)  # RBM URLs hold the number
    body: bytes = field(repr=False)
    headers: dict[str, str] = field(repr=False)


@dataclass(frozen=True, slots=True)
class SendReceipt:
    provider_message_id: str
    accepted: bool


@dataclass(frozen=True, slots=True)
class ProviderEvent:
    """A delivery receipt, read receipt, failure, inbound reply or unsubscribe.

    ``from_phone`` is set for ``inbound`` and ``unsubscribe`` (memory only: hash it at once).
    """

    kind: EventKind
    provider_message_id: str | None
    from_phone: str | None = field(repr=False)
    text: str | None = field(repr=False)
    at: datetime


# --- errors ----------------------------------------------------------------------------------


class ProviderError(ConsentGateError):
    code = "provider-error"
    status = 502
    title = "Provider error"


class ProviderRejected(ProviderError):
    """The provider refused the request (HTTP 4xx other than 408/429): retrying will not help.

    ``provider_status`` is the provider's HTTP status; ``status`` stays 502, the status
    consentgate itself would answer with if this reached the API.
    """

    code = "provider-rejected"
    title = "Provider rejected the request"

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail, extra={"provider_status": status})
        self.provider_status = status


class ProviderUnavailable(ProviderError):
    """The provider could not be reached or failed (5xx, 408, 429, timeout): retry later.

    ``maybe_sent`` is True when the request may have reached the provider before the
    failure (a read timeout, a dropped connection): retrying a provider without idempotency
    keys (Twilio) could then send twice. A refused connection or an error answer is False.
    """

    code = "provider-unavailable"
    status = 503
    title = "Provider unavailable"

    def __init__(self, detail: str, *, maybe_sent: bool = False) -> None:
        super().__init__(detail, extra={"maybe_sent": maybe_sent})
        self.maybe_sent = maybe_sent


class CallbackUnauthenticated(Unauthenticated):
    """A provider callback whose signature is missing or does not verify."""

    code = "callback-unauthenticated"
    title = "Callback signature invalid"


class CallbackMalformed(InvalidInput):
    """A callback that verified but cannot be read as the provider's format."""

    code = "callback-malformed"
    title = "Callback malformed"


# --- the seam --------------------------------------------------------------------------------


class Provider(Protocol):
    name: str

    def capabilities(self, phone_e164: str) -> Capabilities:
        """RCS reachability and native E2EE for a number. May raise ProviderUnavailable."""
        ...

    def send(self, message: OutboundMessage) -> SendReceipt:
        """Hand one message to the provider. Idempotent on ``message.message_id`` where the
        provider supports it. Raises ProviderRejected or ProviderUnavailable."""
        ...

    def revoke(self, provider_message_id: str, *, to: str | None = None) -> bool:
        """Withdraw a sent message; True if it was revoked before delivery. Providers that
        address messages by number (RBM) need ``to``."""
        ...

    def parse_callback(self, headers: Mapping[str, str], body: bytes) -> list[ProviderEvent]:
        """Authenticate and read one callback request. Raises CallbackUnauthenticated."""
        ...


@runtime_checkable
class WireSender(Protocol):
    """A provider whose send can be split into building the request and reading the answer,
    so a caller can carry many sends over its own connections (same wire format as
    ``send``, which is ``send_answer(m, *http(send_request(m)))``)."""

    def send_request(self, message: OutboundMessage) -> WireRequest: ...

    def send_answer(self, message: OutboundMessage, status: int, body: bytes) -> SendReceipt:
        """The receipt for the provider's answer; raises like ``send``."""
        ...


@runtime_checkable
class BatchCapabilities(Protocol):
    """A provider that answers the capability check for many numbers in one request."""

    def capabilities_many(self, phones: Sequence[str]) -> dict[str, Capabilities]:
        """Every number of ``phones`` → its capabilities. Raises ProviderUnavailable."""
        ...


def capabilities_many(provider: Provider, phones: Sequence[str]) -> dict[str, Capabilities]:
    """The capability check for many numbers: one batch request where the provider has one,
    else one check per number. Raises ProviderError when the provider could not answer."""
    if isinstance(provider, BatchCapabilities):
        return provider.capabilities_many(phones)
    return {phone: provider.capabilities(phone) for phone in phones}


# --- helpers shared by the adapters ------------------------------------------------------------


def quiet_http_client_logs() -> None:
    """httpx logs every request URL at INFO, and RBM URLs contain phone numbers."""
    logging.getLogger("httpx").setLevel(logging.WARNING)


def require_e164(phone: str) -> str:
    if not isinstance(phone, str) or not E164.match(phone):
        raise ValueError("the recipient must be an E.164 number (+ and 2 to 15 digits)")
    return phone


def header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup that works on plain dicts too."""
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def request(
    http: httpx.Client, provider: str, method: str, url: str, **kwargs: Any
) -> httpx.Response:
    """One HTTP call; transport failures become ProviderUnavailable.

    The exception's type is kept, its text and chain are not: both can carry the URL.
    """
    try:
        return http.request(method, url, **kwargs)
    except (
        httpx.ConnectError,
        httpx.ConnectTimeout,
        httpx.PoolTimeout,
        httpx.UnsupportedProtocol,
    ) as exc:
        raise ProviderUnavailable(f"{provider}: cannot connect ({type(exc).__name__})") from None
    except httpx.TimeoutException as exc:
        detail = f"{provider}: timed out ({type(exc).__name__})"
        raise ProviderUnavailable(detail, maybe_sent=True) from None
    except httpx.HTTPError as exc:
        detail = f"{provider}: transport error ({type(exc).__name__})"
        raise ProviderUnavailable(detail, maybe_sent=True) from None


def response_json(response: httpx.Response, provider: str) -> dict[str, Any]:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        raise ProviderUnavailable(f"{provider}: unreadable response (HTTP {response.status_code})")
    return body


def raise_for_status(
    response: httpx.Response, provider: str, error_code: Callable[[dict[str, Any]], object]
) -> None:
    """Map a non-2xx response to ProviderRejected / ProviderUnavailable.

    ``error_code`` picks the provider's machine-readable code out of its error body (never
    its free text).
    """
    if response.status_code >= 300:
        raise_for_answer(response.status_code, response.content, provider, error_code)


def raise_for_answer(
    status: int, content: bytes, provider: str, error_code: Callable[[dict[str, Any]], object]
) -> None:
    """:func:`raise_for_status` on a status and body read by any HTTP client."""
    if status < 300:
        return
    try:
        body = json.loads(content)
        code = error_code(body) if isinstance(body, dict) else None
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        code = None
    detail = f"{provider}: HTTP {status}" + (f" {code}" if code not in (None, "") else "")
    if status in (408, 429) or status >= 500:
        raise ProviderUnavailable(detail)
    raise ProviderRejected(status, detail)


def event_time(value: object, clock: Clock) -> datetime:
    """A provider timestamp (RFC 3339) or, when absent or unreadable, now."""
    if isinstance(value, str):
        try:
            return parse_rfc3339(value, field="sendTime")
        except InvalidInput:
            pass
    return clock.now()


_KINDS: dict[str, EventKind] = {
    "delivered": "delivered",
    "read": "read",
    "failed": "failed",
    "inbound": "inbound",
    "unsubscribe": "unsubscribe",
}


# --- the fake --------------------------------------------------------------------------------


class FakeProvider:
    """An in-memory provider for tests of the dispatch path.

    ``numbers`` maps E.164 numbers to their capabilities (others: no RCS). Queue errors in
    ``failures`` to have the next ``send``/``capabilities`` calls raise them in order. Sends
    are idempotent on ``message_id``. Callbacks are JSON lists of event objects, accepted when
    the ``X-Fake-Secret`` header equals ``secret``.
    """

    def __init__(
        self,
        name: str = "fake",
        *,
        numbers: Mapping[str, Capabilities] | None = None,
        secret: str = "fake-secret",  # noqa: S107 - a test double's shared secret
        clock: Clock | None = None,
    ) -> None:
        self.name = name
        self.numbers = dict(numbers or {})
        self.secret = secret
        self.clock = clock or SystemClock()
        self.sent: dict[str, OutboundMessage] = {}
        self.delivered: set[str] = set()
        self.revoked: set[str] = set()
        self.failures: list[ProviderError] = []

    def _maybe_fail(self) -> None:
        if self.failures:
            raise self.failures.pop(0)

    def capabilities(self, phone_e164: str) -> Capabilities:
        self._maybe_fail()
        return self.numbers.get(phone_e164, Capabilities(rcs=False, native_e2ee=False))

    def send(self, message: OutboundMessage) -> SendReceipt:
        self._maybe_fail()
        self.sent.setdefault(message.message_id, message)
        return SendReceipt(provider_message_id=message.message_id, accepted=True)

    def deliver(self, provider_message_id: str) -> None:
        """Mark a message delivered (it can no longer be revoked)."""
        self.delivered.add(provider_message_id)

    def revoke(self, provider_message_id: str, *, to: str | None = None) -> bool:
        if provider_message_id not in self.sent or provider_message_id in self.delivered:
            return False
        self.revoked.add(provider_message_id)
        return True

    def parse_callback(self, headers: Mapping[str, str], body: bytes) -> list[ProviderEvent]:
        if header(headers, "X-Fake-Secret") != self.secret:
            raise CallbackUnauthenticated("fake: bad callback secret")
        try:
            items: Iterable[dict[str, Any]] = json.loads(body)
            return [
                ProviderEvent(
                    kind=_KINDS[item["kind"]],
                    provider_message_id=item.get("provider_message_id"),
                    from_phone=item.get("from_phone"),
                    text=item.get("text"),
                    at=event_time(item.get("at"), self.clock),
                )
                for item in items
            ]
        except (ValueError, TypeError, KeyError):
            raise CallbackMalformed("fake: callback is not a list of events") from None
