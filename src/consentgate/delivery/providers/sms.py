"""The SMS adapter in Twilio's Messages API wire format, plus Twilio's request-signing helper
that the sandbox carrier uses to sign its callbacks the same way.

Wire format (Twilio docs: "Messages resource", "Secure webhooks"):

- send: ``POST {base}/2010-04-01/Accounts/{AccountSid}/Messages.json``, HTTP basic auth
  ``AccountSid:AuthToken``, form-encoded ``To``, ``From`` or ``MessagingServiceSid``,
  ``Body``, ``StatusCallback`` → ``201 {"sid": "SM…", "status": "queued", …}``; errors are
  ``{"code": 21211, "message": …, "status": 400}`` (only the numeric code is kept: the
  message quotes the number).
- status callbacks (form-encoded): ``MessageSid``, ``MessageStatus`` (queued, sent,
  delivered, undelivered, failed, read, …), ``ErrorCode``; inbound messages: ``From``,
  ``Body``, ``MessageSid`` and, with Advanced Opt-Out, ``OptOutType`` (STOP/START/HELP).
- ``X-Twilio-Signature`` = base64(HMAC-SHA1(key=AuthToken, msg=the full callback URL
  followed by every POST parameter, sorted by name, as name+value with no separators)).
  The URL must be exactly the one Twilio was given (scheme, host, port, path, query).

SMS has neither RCS nor end-to-end encryption, so the adapter refuses envelopes and E2EE
requests outright rather than dropping them. Twilio can cancel only *scheduled* messages and
consentgate never schedules, so :meth:`SmsProvider.revoke` always answers False. The Messages
API takes no idempotency key: a send that timed out (``ProviderUnavailable.maybe_sent``) may
have gone out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, quote

import httpx

from consentgate.delivery.providers.base import (
    CallbackUnauthenticated,
    Capabilities,
    OutboundMessage,
    ProviderEvent,
    ProviderRejected,
    SendReceipt,
    header,
    quiet_http_client_logs,
    raise_for_status,
    request,
    require_e164,
)
from consentgate.domain.clock import Clock, SystemClock

SIGNATURE_HEADER = "X-Twilio-Signature"
API_VERSION = "2010-04-01"

_NOT_ACCEPTED = frozenset({"failed", "undelivered", "canceled"})
_STATUS_KINDS = {"delivered": "delivered", "read": "read", "failed": "failed"}


def signature(auth_token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    """Twilio's ``X-Twilio-Signature`` for a request to ``url`` with these POST params."""
    payload = url + "".join(name + value for name, value in sorted(params))
    digest = hmac.new(auth_token.encode("utf-8"), payload.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def parse_form(body: bytes) -> list[tuple[str, str]]:
    """A form-encoded body as (name, value) pairs; ValueError if it is not one."""
    text = body.decode("utf-8")
    if not text:
        return []
    return parse_qsl(text, keep_blank_values=True, strict_parsing=True, errors="strict")


def _twilio_code(body: dict[str, Any]) -> object:
    return f"error {body['code']}" if body.get("code") is not None else None


class SmsProvider:
    """SMS through Twilio's Messages API (or the sandbox carrier speaking it).

    ``base_url`` is the API root (``https://api.twilio.com``, or ``.../sandbox/twilio``).
    ``status_callback`` is sent with each message; ``callback_url`` is the URL callbacks are
    signed for (default: ``status_callback``). Without either, callbacks are refused.
    """

    name = "sms"

    def __init__(
        self,
        http: httpx.Client,
        *,
        base_url: str,
        account_sid: str,
        auth_token: str,
        from_number: str | None = None,
        messaging_service_sid: str | None = None,
        status_callback: str | None = None,
        callback_url: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        if not account_sid or not auth_token:
            raise ValueError("sms: an account SID and auth token are required")
        if from_number is None and messaging_service_sid is None:
            raise ValueError("sms: a From number or a MessagingServiceSid is required")
        quiet_http_client_logs()
        self._http = http
        self._base = base_url.rstrip("/")
        self._sid = account_sid
        self._token = auth_token
        self._from = from_number
        self._service = messaging_service_sid
        self._status_callback = status_callback
        self._callback_url = callback_url or status_callback
        self._clock = clock or SystemClock()

    def capabilities(self, phone_e164: str) -> Capabilities:
        require_e164(phone_e164)
        return Capabilities(rcs=False, native_e2ee=False)

    def send(self, message: OutboundMessage) -> SendReceipt:
        if message.channel != "sms":
            raise ValueError(f"sms sends SMS messages, not {message.channel!r}")
        if message.envelope is not None or message.e2ee:
            raise ValueError("sms carries no envelope and has no end-to-end encryption")
        parts = [part for part in (message.text, message.link) if part]
        if not parts:
            raise ValueError("sms needs a text or a link")
        form = {"To": require_e164(message.to), "Body": "\n".join(parts)}
        if self._service is not None:
            form["MessagingServiceSid"] = self._service
        if self._from is not None:
            form["From"] = self._from
        if self._status_callback is not None:
            form["StatusCallback"] = self._status_callback
        response = request(
            self._http,
            self.name,
            "POST",
            f"{self._base}/{API_VERSION}/Accounts/{quote(self._sid, safe='')}/Messages.json",
            data=form,
            auth=(self._sid, self._token),
        )
        raise_for_status(response, self.name, _twilio_code)
        try:
            body = response.json()
            sid, status = body["sid"], body.get("status")
        except (ValueError, UnicodeDecodeError, KeyError, TypeError):
            sid, status = None, None
        if not isinstance(sid, str) or not sid:
            # Twilio took the request, so a retry could send twice: do not ask for one.
            raise ProviderRejected(response.status_code, "sms: answer without a message sid")
        return SendReceipt(provider_message_id=sid, accepted=status not in _NOT_ACCEPTED)

    def revoke(self, provider_message_id: str, *, to: str | None = None) -> bool:
        """Always False: Twilio cancels only scheduled messages, and none are scheduled."""
        return False

    def parse_callback(self, headers: Mapping[str, str], body: bytes) -> list[ProviderEvent]:
        if self._callback_url is None:
            raise CallbackUnauthenticated("sms: no callback URL configured to verify against")
        given = header(headers, SIGNATURE_HEADER)
        if not given:
            raise CallbackUnauthenticated(f"sms: no {SIGNATURE_HEADER} header")
        try:
            params = parse_form(body)
        except (ValueError, UnicodeDecodeError):
            raise CallbackUnauthenticated("sms: callback is not form-encoded") from None
        expected = signature(self._token, self._callback_url, params).encode("ascii")
        if not hmac.compare_digest(expected, given.encode("utf-8", "replace")):
            raise CallbackUnauthenticated("sms: callback signature does not verify")
        fields = dict(params)
        at = self._clock.now()
        sid = fields.get("MessageSid") or fields.get("SmsSid")
        status = fields.get("MessageStatus")
        if status is not None and status != "received":
            kind = _STATUS_KINDS.get("failed" if status == "undelivered" else status)
            if kind == "delivered":
                return [ProviderEvent("delivered", sid, None, None, at)]
            if kind == "read":
                return [ProviderEvent("read", sid, None, None, at)]
            if kind == "failed":
                return [ProviderEvent("failed", sid, None, None, at)]
            return []  # queued, sending, sent, accepted, …: nothing final yet
        if "From" in fields and "Body" in fields:
            if fields.get("OptOutType", "").upper() == "STOP":
                return [ProviderEvent("unsubscribe", sid, fields["From"], fields["Body"], at)]
            return [ProviderEvent("inbound", sid, fields["From"], fields["Body"], at)]
        return []
