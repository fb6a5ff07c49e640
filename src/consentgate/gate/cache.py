"""An in-process TTL cache of consent state for on-send checks, safe against the stale-put
race.

What is cached is the recorded state (status, expiry, ledger seq), never a verdict: expiry is
judged at every check against the clock. A change to a (tenant, subject, purpose) evicts its
entry and bumps its generation; a reader that started before the eviction carries the old
generation and its ``put`` is refused, so a grant read just before a withdrawal committed can
never be cached after it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

Key = tuple[str, str, str]  # tenant, subject_ref, purpose


@dataclass(frozen=True, slots=True)
class CachedState:
    """None status: nothing recorded for this subject and purpose."""

    status: str | None
    expires_at: datetime | None
    consent_seq: int | None


class StateCache:
    def __init__(
        self,
        ttl_seconds: float = 30.0,
        max_entries: int = 1_000_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl_seconds
        self._max = max_entries
        self._now = monotonic
        self._lock = threading.Lock()
        self._entries: dict[Key, tuple[float, CachedState]] = {}
        self._generations: dict[Key, int] = {}
        self._epoch = 0  # bumped by clear(): invalidates every reader in flight
        self.enabled = True

    def get(self, key: Key) -> CachedState | None:
        if not self.enabled:
            return None
        hit = self._entries.get(key)
        if hit is None:
            return None
        if self._now() >= hit[0]:
            self._entries.pop(key, None)
            return None
        return hit[1]

    def token(self, key: Key) -> tuple[int, int]:
        """Take before reading the store; hand back to :meth:`put`."""
        with self._lock:
            return self._epoch, self._generations.get(key, 0)

    def put(self, key: Key, state: CachedState, token: tuple[int, int]) -> bool:
        with self._lock:
            if not self.enabled or token != (self._epoch, self._generations.get(key, 0)):
                return False  # evicted (or cleared) while the reader was at the store
            if len(self._entries) >= self._max:
                self._entries.clear()
            self._entries[key] = (self._now() + self._ttl, state)
            return True

    def evict(self, key: Key) -> None:
        with self._lock:
            self._entries.pop(key, None)
            self._generations[key] = self._generations.get(key, 0) + 1
            if len(self._generations) > self._max:
                # Forgetting generations is only safe together with everything cached.
                self._generations.clear()
                self._entries.clear()
                self._epoch += 1

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._generations.clear()
            self._epoch += 1

    def __len__(self) -> int:
        return len(self._entries)
