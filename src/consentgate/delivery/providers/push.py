"""The in-app push adapter: delivers an envelope sealed to the app's device key (the
``in_app`` mode) through the app's own inbox, addressed by the device key id, never by phone
number. The wire format is consentgate's own (there is no public standard to follow), spoken
by the sandbox carrier:

- send: ``POST {base}/v1/messages`` with ``{"message_id", "device_kid", "envelope"}`` and an
  optional ``"text"`` (the notification teaser) → ``201 {"message_id", "status"}``; a
  repeated ``message_id`` answers ``409`` and counts as accepted (idempotent).
- revoke: ``DELETE {base}/v1/messages/{message_id}``: 200 withdrawn, 404 already delivered.
- no callbacks: any callback claiming to be from this provider is refused.

Errors are RFC 9457 problems; only the status and the problem ``type`` are kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx

from consentgate.delivery.providers.base import (
    CallbackUnauthenticated,
    Capabilities,
    OutboundMessage,
    ProviderEvent,
    SendReceipt,
    quiet_http_client_logs,
    raise_for_status,
    request,
    require_e164,
)


def _problem_type(body: dict[str, Any]) -> object:
    return body.get("type")


class PushProvider:
    """In-app push through the app inbox service (the sandbox's ``.../sandbox/push``)."""

    name = "push"

    def __init__(self, http: httpx.Client, *, base_url: str, token: str | None = None) -> None:
        quiet_http_client_logs()
        self._http = http
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

    def capabilities(self, phone_e164: str) -> Capabilities:
        require_e164(phone_e164)
        return Capabilities(rcs=False, native_e2ee=False)

    def send(self, message: OutboundMessage) -> SendReceipt:
        if message.channel != "push":
            raise ValueError(f"push sends push messages, not {message.channel!r}")
        if message.envelope is None or not message.device_kid:
            raise ValueError("push needs an envelope and the device_kid it is sealed to")
        body: dict[str, Any] = {
            "message_id": message.message_id,
            "device_kid": message.device_kid,
            "envelope": message.envelope,
        }
        if message.text is not None:
            body["text"] = message.text
        response = request(
            self._http,
            self.name,
            "POST",
            f"{self._base}/v1/messages",
            json=body,
            headers=self._headers,
        )
        if response.status_code != 409:  # 409: sent before under this id
            raise_for_status(response, self.name, _problem_type)
        return SendReceipt(provider_message_id=message.message_id, accepted=True)

    def revoke(self, provider_message_id: str, *, to: str | None = None) -> bool:
        response = request(
            self._http,
            self.name,
            "DELETE",
            f"{self._base}/v1/messages/{quote(provider_message_id, safe='')}",
            headers=self._headers,
        )
        if response.status_code == 404:
            return False
        raise_for_status(response, self.name, _problem_type)
        return True

    def parse_callback(self, headers: Mapping[str, str], body: bytes) -> list[ProviderEvent]:
        raise CallbackUnauthenticated("push: this provider sends no callbacks")
