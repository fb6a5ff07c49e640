"""Cross-process cache invalidation: a thread that LISTENs on PostgreSQL and evicts.

Every commit that changes consent state NOTIFYs ``consentgate_consent`` with the changed
(tenant, subject_ref, purpose) triples; this listener evicts them from the local cache. A
notification sent while the listener was disconnected is lost, so while it is down the cache
is switched off (every check goes to the store) and it is cleared when the listener is back.

Each notification carries the writer's clock just before its commit; the time it took to get
here is observed into ``consentgate_consent_invalidation_reach_seconds`` (per key), which is
how far behind a commit this process's cache can be.
"""

from __future__ import annotations

import logging
import threading
import time

import psycopg
from sqlalchemy import Engine

from consentgate.consent.ingest import CONSENT_CHANNEL
from consentgate.gate.cache import StateCache
from consentgate.observability.metrics import Metrics

log = logging.getLogger("consentgate.gate.notify")


def libpq_dsn(engine: Engine) -> str:
    url = engine.url.set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class InvalidationListener:
    def __init__(
        self,
        dsn: str,
        cache: StateCache,
        poll_seconds: float = 0.5,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics
        self._dsn = dsn
        self._cache = cache
        self._poll = poll_seconds
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="consent-listener", daemon=True)
        self.evictions = 0

    def start(self, wait_seconds: float = 10.0) -> bool:
        """Start listening; True once LISTEN is in place (until then the cache is off)."""
        self._cache.enabled = False
        self._thread.start()
        return self._ready.wait(wait_seconds)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _handle(self, payload: str) -> None:
        heard = time.time_ns() // 1000
        stamp: int | None = None
        keys = 0
        for line in payload.split("\n"):
            if line.startswith("@"):
                stamp = int(line[1:]) if line[1:].isdigit() else None
                continue
            parts = line.split(" ")
            if len(parts) == 3:
                self._cache.evict((parts[0], parts[1], parts[2]))
                self.evictions += 1
                keys += 1
        if stamp is not None and keys and self._metrics is not None:
            self._metrics.invalidation_reached(max(0, heard - stamp) / 1e6, keys)

    def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CONSENT_CHANNEL}")
                    # Anything cached before LISTEN took effect may have missed an eviction.
                    self._cache.clear()
                    self._cache.enabled = True
                    self._ready.set()
                    backoff = 0.1
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=self._poll):
                            self._handle(note.payload)
            except (psycopg.Error, OSError) as exc:
                self._cache.enabled = False
                self._cache.clear()
                self._ready.clear()
                log.warning("consent listener lost PostgreSQL (%s); cache off", type(exc).__name__)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
        self._cache.enabled = False
