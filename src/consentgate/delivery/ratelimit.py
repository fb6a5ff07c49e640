"""Per-provider rate limits for dispatch: a token bucket per provider, shared by the threads
that carry one process's provider requests.

A bucket holds at most ``burst`` tokens and gains ``rate`` per second. Taking a token never
fails while tokens are left; otherwise the taker *reserves* the next one (the balance goes
negative) and sleeps until it is due, so concurrent senders queue fairly and the long-run
rate is exactly ``rate``. A taker whose token would come after its deadline gets False and
reserves nothing: the dispatcher then hands that recipient back instead of working its claim
past the lease. The limit is per process; with several dispatch processes each keeps its own
(set the rate per process accordingly).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping


class TokenBucket:
    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not rate > 0:
            raise ValueError("a token bucket needs a positive rate")
        self.rate = float(rate)
        # A tenth of a second's worth by default: smooth, but not a request at a time.
        self.burst = float(burst) if burst is not None else max(1.0, self.rate / 10)
        self._now = monotonic
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = self.burst
        self._at = monotonic()

    def acquire(self, deadline: float | None = None) -> bool:
        """Take a token, sleeping until one is due; False (nothing taken) if that would be
        after ``deadline`` (a ``monotonic`` instant)."""
        with self._lock:
            now = self._now()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
            wait = 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate
            if deadline is not None and now + wait > deadline:
                return False
            self._tokens -= 1
        if wait > 0:
            self._sleep(wait)
        return True


class RateLimits:
    """One bucket per provider name that has a rate; providers without one are not limited."""

    def __init__(self, rates: Mapping[str, float]) -> None:
        self._buckets = {name: TokenBucket(rate) for name, rate in rates.items() if rate > 0}

    def bucket(self, provider: str) -> TokenBucket | None:
        return self._buckets.get(provider)

    def rate(self, provider: str) -> float | None:
        bucket = self._buckets.get(provider)
        return None if bucket is None else bucket.rate
