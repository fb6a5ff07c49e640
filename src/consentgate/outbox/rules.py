"""The relay's rules, as pure functions: Standard Webhooks ids and signatures, which endpoint
gets which event, and when a failed delivery is tried again or given up.

Retries use exponential backoff with *full jitter* (a uniform draw in ``[0, min(cap, base ·
2^(n-1))]`` after the n-th failure), so endpoints that come back after an outage are not hit
by every relay at the same instant. A delivery is given up (``dead``) once it has been failing
for the give-up window, counted from when it was queued (or replayed); the last retry is
scheduled no later than the end of that window, so there is always one attempt at the end.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass

SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)


def webhook_id(event_id: str, endpoint_id: str) -> str:
    """Stable per (event, endpoint): every retry and replay carries the same id, so the
    receiver de-duplicates; two endpoints never share one."""
    return f"msg_{event_id}_{endpoint_id}"


def format_secret(secret: bytes) -> str:
    return SECRET_PREFIX + base64.b64encode(secret).decode()


def signature(secret: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """``webhook-signature``: ``v1,<base64 HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>``."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(secret, signed, hashlib.sha256).digest()).decode()


def signed_headers(secret: bytes, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "user-agent": "consentgate-webhooks/1",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, webhook_id, timestamp, body),
    }


def wants(kind: str, subscribed: frozenset[str], event_type: str, to_cmp: bool) -> bool:
    """Whether an endpoint receives an event: it subscribed to the type, and a ``cmp``
    endpoint is not sent what the CMP itself told us (``to_cmp`` False)."""
    return event_type in subscribed and (kind != "cmp" or to_cmp)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base_seconds: float = 5.0
    cap_seconds: float = 3600.0
    give_up_seconds: float = 3 * 86_400.0

    def ceiling_us(self, attempts: int) -> int:
        """The largest delay after the ``attempts``-th failed attempt (before jitter)."""
        doubling = 2.0 ** min(max(attempts, 1) - 1, 62)
        return int(min(self.cap_seconds, self.base_seconds * doubling) * 1_000_000)

    def after_failure(
        self, attempts: int, now_us: int, queued_us: int, rand: Callable[[], float]
    ) -> int | None:
        """When to try again after the ``attempts``-th failed attempt at ``now_us``, or None:
        the give-up window is over, the delivery is dead."""
        deadline = queued_us + int(self.give_up_seconds * 1_000_000)
        if now_us >= deadline:
            return None
        delay = int(rand() * self.ceiling_us(attempts))
        return min(now_us + delay, deadline)
