"""Send fences: a withdrawal is not acknowledged while a send that saw the subject's consent
before the withdrawal committed is still on its way to the provider.

The on-send check reads the store, then the message goes out, tens or hundreds of
milliseconds later for a campaign batch (rate limits, a batch's other sends). A withdrawal
that commits in between was checked too late for that message: without a fence the carrier
receives it after the withdrawal was acknowledged (the revoker then withdraws it at the
provider, but it was sent). DESIGN §3 says nothing leaves after the acknowledgement.

So, on PostgreSQL, a sender holds a *shared* advisory lock per (tenant, subject, purpose)
from before its consent read until its sends are over, and a withdrawal, after its commit
and before its answer, takes the *exclusive* lock on each withdrawn key in a transaction of
its own and lets it go at once: it waits for exactly the sends that may have read the old
state. A sender that takes its lock after the withdrawal's commit reads the withdrawal and
sends nothing. Keys are
taken in sorted order on both sides, so the two never deadlock; a killed sender's locks go
with its connection. Senders on different subjects never wait for each other, nor do
grants.

The wait is bounded (:data:`WAIT`): sends end by their lease deadline, and should a fence
still be held past the bound (a sender stopped with its connection open), the withdrawal is
acknowledged and the revoker withdraws the late message at the provider, as before.

If the fence cannot be taken the sender does not send (:class:`StoreUnavailable`: it fails
closed, like the check itself). SQLite has no advisory locks: its processes share a host,
and the same fences are byte-range locks on a file beside the database
(:mod:`consentgate.gate.filefence`).
"""

from __future__ import annotations

import logging
import os
import threading
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from consentgate.errors import StoreUnavailable
from consentgate.gate import filefence

log = logging.getLogger("consentgate.gate.fence")

#: The advisory lock class (the first int4 of the two-key form) of send fences.
FENCE_CLASS = 0x5E7D
WAIT = timedelta(seconds=10)

_SHARED = text(
    "SELECT count(pg_advisory_lock_shared(:c, k)) FROM unnest(CAST(:keys AS int[])) AS k"
)
_EXCLUSIVE = text(
    "SELECT count(pg_advisory_xact_lock(:c, k)) FROM unnest(CAST(:keys AS int[])) AS k"
)
_RELEASE = text("SELECT pg_advisory_unlock_all()")


def fence_key(tenant: str, subject_ref: str, purpose: str) -> int:
    """A stable signed 32-bit key (keys that collide only make a withdrawal wait longer)."""
    value = zlib.crc32(f"{tenant}\x00{subject_ref}\x00{purpose}".encode())
    return value - (1 << 32) if value >= 1 << 31 else value


def _keys(tenant: str, pairs: Iterable[tuple[str, str]]) -> list[int]:
    return sorted({fence_key(tenant, ref, purpose) for ref, purpose in pairs})


class SendFence:
    """Fences are held and awaited on connections of a pool of their own: a sender holding
    one then needs a connection of the main pool (its check, its records), and were both
    from one pool, enough concurrent senders (or withdrawals waiting for them) would each
    hold one and wait for another."""

    def __init__(self, engine: Engine, wait: timedelta = WAIT) -> None:
        self._main = engine
        self._on = engine.dialect.name == "postgresql"
        self._wait_ms = int(wait.total_seconds() * 1000)
        path = filefence.path_for(engine.url) if engine.dialect.name == "sqlite" else None
        self._file = None if path is None else filefence.FileFence(path)
        self._pool: Engine | None = None
        self._lock = threading.Lock()

    def _senders(self) -> Engine:
        with self._lock:
            if self._pool is None:
                self._pool = create_engine(
                    self._main.url, pool_size=2, max_overflow=64, pool_pre_ping=True
                )
            return self._pool

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.dispose()
                self._pool = None

    @contextmanager
    def sending(self, tenant: str, refs: Iterable[str], purpose: str) -> Iterator[None]:
        """Hold the fences of these subjects for the block: check consent, then send,
        inside it. Raises :class:`StoreUnavailable` when the fences cannot be taken."""
        keys = _keys(tenant, ((ref, purpose) for ref in refs))
        if self._file is not None and keys:
            try:
                fd = self._file.hold(k % filefence.SLOTS for k in keys)
            except OSError as exc:
                raise StoreUnavailable("cannot take the send fences") from exc
            try:
                yield
            finally:
                os.close(fd)
            return
        if not self._on or not keys:
            yield
            return
        try:
            conn = self._senders().connect().execution_options(isolation_level="AUTOCOMMIT")
        except SQLAlchemyError as exc:
            raise StoreUnavailable("cannot take the send fences") from exc
        try:
            try:
                conn.execute(_SHARED, {"c": FENCE_CLASS, "keys": keys})
            except SQLAlchemyError as exc:
                raise StoreUnavailable("cannot take the send fences") from exc
            yield
        finally:
            try:
                conn.execute(_RELEASE)
            except SQLAlchemyError:
                conn.invalidate()  # a broken connection's locks went with it
            conn.close()

    def wait_for_sends(self, tenant: str, pairs: Iterable[tuple[str, str]]) -> bool:
        """After a withdrawal of these (subject_ref, purpose) pairs committed, before it is
        acknowledged: wait until no send that may have read the older state is in flight.
        False if it gave up (the bound passed, or the fences could not be read)."""
        keys = _keys(tenant, pairs)
        waited = True
        if self._file is not None and keys:
            try:
                waited = self._file.wait((k % filefence.SLOTS for k in keys), self._wait_ms / 1000)
            except OSError as exc:
                waited = False
                log.warning("send fence file unusable (%s)", type(exc).__name__)
        elif self._on and keys:
            try:
                with self._senders().begin() as conn:  # the locks end with the transaction
                    conn.execute(text(f"SET LOCAL lock_timeout = {max(1, self._wait_ms)}"))
                    conn.execute(_EXCLUSIVE, {"c": FENCE_CLASS, "keys": keys})
            except SQLAlchemyError as exc:
                waited = False
                log.warning("send fences unavailable (%s)", type(exc).__name__)
        if not waited:
            log.warning(
                "withdrawal acknowledged without waiting for in-flight sends: the revoker "
                "withdraws any late message at the provider"
            )
        return waited
