"""An in-process TTL cache of consent state for on-send checks, safe against the stale-put
race.

What is cached is the recorded state (status, expiry, ledger seq), never a verdict: expiry is
judged at every check against the clock. A change to a (tenant, subject, purpose) evicts its
entry and bumps its generation; a reader that started before the eviction carries the old
generation and its ``put`` is refused, so a grant read just before a withdrawal committed can
never be cached after it.

Other processes' changes arrive through :class:`~consentgate.gate.generations.SharedGenerations`
when one is given: the entry remembers the shared counter of its key as read before the
store was, and a hit counts only while the counter still has that value.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy.engine import URL

from consentgate.gate.generations import SharedGenerations, open_shared, path_for, slot

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
        shared: SharedGenerations | None = None,
    ) -> None:
        self._ttl = ttl_seconds
        self._max = max_entries
        self._now = monotonic
        self._shared = shared
        self._lock = threading.Lock()
        # key → (expiry, state, shared counter index, its value when the store was read)
        self._entries: dict[Key, tuple[float, CachedState, int, int]] = {}
        self._generations: dict[Key, int] = {}
        self._epoch = 0  # bumped by clear(): invalidates every reader in flight
        self.enabled = True

    def get(self, key: Key) -> CachedState | None:
        if not self.enabled:
            return None
        hit = self._entries.get(key)
        if hit is None:
            return None
        if self._now() >= hit[0] or (
            self._shared is not None and self._shared.read(hit[2]) != hit[3]
        ):
            self._entries.pop(key, None)  # expired, or changed by another process
            return None
        return hit[1]

    def token(self, key: Key) -> tuple[int, int, int, int]:
        """Take before reading the store; hand back to :meth:`put`."""
        index = slot(*key) if self._shared is not None else 0
        shared = self._shared.read(index) if self._shared is not None else 0
        with self._lock:
            return self._epoch, self._generations.get(key, 0), index, shared

    def put(self, key: Key, state: CachedState, token: tuple[int, int, int, int]) -> bool:
        epoch, generation, index, shared = token
        with self._lock:
            if not self.enabled or (epoch, generation) != (
                self._epoch,
                self._generations.get(key, 0),
            ):
                return False  # evicted (or cleared) while the reader was at the store
            if len(self._entries) >= self._max:
                self._entries.clear()
            self._entries[key] = (self._now() + self._ttl, state, index, shared)
            return True

    def evict(self, key: Key) -> None:
        """Forget ``key`` here (a change another process told us about)."""
        with self._lock:
            self._evict(key)

    def changed(self, keys: list[Key]) -> None:
        """This process committed changes to ``keys``: forget them here, and bump their shared
        counters so every other process forgets them too. Call after the commit and before
        the change is acknowledged."""
        with self._lock:
            for key in keys:
                self._evict(key)
        if self._shared is not None:
            self._shared.bump(slot(*key) for key in keys)

    def _evict(self, key: Key) -> None:
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


def for_store(ttl_seconds: float, url: URL, data_dir: Path) -> StateCache:
    """The cache of a process using the database at ``url``, sharing generations with this
    host's other processes. A SQLite file whose counters cannot be shared gets no cache at
    all: another process's withdrawal would otherwise go unseen for ``ttl_seconds``."""
    shared = open_shared(url, data_dir)
    cache = StateCache(ttl_seconds, shared=shared)
    if (
        shared is None
        and path_for(url, data_dir) is not None
        and url.get_backend_name() == "sqlite"
    ):
        cache.enabled = False
    return cache
