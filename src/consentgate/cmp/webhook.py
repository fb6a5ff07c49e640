"""Standard Webhooks authentication of CMP deliveries (pure over a MAC function).

``webhook-signature`` holds space-separated ``v1,<base64 HMAC-SHA256>`` entries over
``"{webhook-id}.{webhook-timestamp}.{body}"``; any one matching a live secret authenticates.
The secret stays in the key store: callers pass ``mac(data) -> [digest per live secret]``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from consentgate.errors import Unauthenticated

TOLERANCE_SECONDS = 300


@dataclass(frozen=True, slots=True)
class WebhookHeaders:
    webhook_id: str
    timestamp: int
    signatures: list[bytes]


def parse_headers(headers: Mapping[str, str]) -> WebhookHeaders:
    webhook_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "")
    signature = headers.get("webhook-signature", "")
    if not webhook_id or not timestamp or not signature:
        raise Unauthenticated(
            "webhook-id, webhook-timestamp and webhook-signature headers are required "
            "(Standard Webhooks)"
        )
    if len(webhook_id) > 200:
        raise Unauthenticated("webhook-id is too long")
    if not timestamp.isdigit():
        raise Unauthenticated("webhook-timestamp must be Unix seconds")
    signatures = []
    for entry in signature.split(" "):
        version, _, value = entry.partition(",")
        if version != "v1" or not value:
            continue  # other schemes (e.g. v1a asymmetric) are not ours to check
        try:
            signatures.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            continue
    if not signatures:
        raise Unauthenticated("webhook-signature has no v1 signature")
    return WebhookHeaders(webhook_id, int(timestamp), signatures)


def authenticate(
    headers: Mapping[str, str],
    body: bytes,
    mac: Callable[[bytes], list[bytes]],
    now: datetime,
    tolerance: int = TOLERANCE_SECONDS,
) -> WebhookHeaders:
    """Check freshness and signature; raise :class:`Unauthenticated` on any failure."""
    parsed = parse_headers(headers)
    if abs(now.timestamp() - parsed.timestamp) > tolerance:
        raise Unauthenticated("webhook-timestamp is more than 5 minutes off")
    signed = f"{parsed.webhook_id}.{parsed.timestamp}.".encode() + body
    expected = mac(signed)
    if not any(hmac.compare_digest(e, s) for e in expected for s in parsed.signatures):
        raise Unauthenticated("webhook-signature does not verify")
    return parsed
