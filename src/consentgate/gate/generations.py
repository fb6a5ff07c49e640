"""Generation counters shared by every process on this host that uses one database, so a
consent change committed by one process invalidates what the others cached before it is
acknowledged.

``consentgate serve --workers N``, a separate ``consentgate worker`` and the CLI are separate
processes, each with its own consent cache (:mod:`consentgate.gate.cache`). PostgreSQL tells
them about changes with NOTIFY, but a notification is delivered after the commit, at some
point: a check served by another process just after the writer's 2xx could still read a
grant from its cache. SQLite has no notification at all.

So the writer bumps a counter after its commit and before it answers, and a reader compares
the counter with the value it read before it went to the store for the entry: a memory read
per check. The counters live in a small file mapped into every process (``MAP_SHARED``: a
write is visible to the other processes at once, without a system call). A key maps to one
of :data:`SLOTS` counters by a stable hash; keys that share a counter only cost each other
extra cache misses, never a stale answer. Writers take an ``flock`` so no increment is lost;
counters only grow (64 bits), so a value read before a bump never equals one after it.

The file holds counters, nothing about any person. For SQLite it sits beside the database
(``<database>-gate``: every process of that database is on this host); for PostgreSQL in the
data directory, named after the server and database, shared by this host's processes (other
hosts still rely on NOTIFY).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import mmap
import os
import struct
import zlib
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy.engine import URL

log = logging.getLogger("consentgate.gate")

SLOTS = 1 << 14  # 16,384 counters: 128 KiB
_U64 = struct.Struct("<Q")
_SIZE = SLOTS * _U64.size


def slot(tenant: str, subject_ref: str, purpose: str) -> int:
    """The counter of a (tenant, subject, purpose): a stable hash (the same in every
    process, unlike ``hash()``)."""
    return zlib.crc32(f"{tenant}\x00{subject_ref}\x00{purpose}".encode()) % SLOTS


class SharedGenerations:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.fstat(fd).st_size < _SIZE:
                    os.ftruncate(fd, _SIZE)  # zero-filled: every counter starts at 0
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            self._map = mmap.mmap(fd, _SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def read(self, index: int) -> int:
        return int(_U64.unpack_from(self._map, index * _U64.size)[0])

    def bump(self, indexes: Iterable[int]) -> None:
        """Increment each counter once (after the change committed, before it is answered)."""
        wanted = sorted(set(indexes))
        if not wanted:
            return
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            for index in wanted:
                offset = index * _U64.size
                _U64.pack_into(self._map, offset, _U64.unpack_from(self._map, offset)[0] + 1)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)


def path_for(url: URL, data_dir: Path) -> Path | None:
    """Where the processes of this database share their counters; None for an in-memory
    SQLite database (one process, nothing to share)."""
    if url.get_backend_name() == "sqlite":
        database = url.database
        if not database or database == ":memory:" or database.startswith("file:"):
            return None
        return Path(database).resolve().with_name(Path(database).name + "-gate")
    server = url.set(password=None, query={}).render_as_string(hide_password=True)
    name = hashlib.sha256(server.encode()).hexdigest()[:16]
    return data_dir / f"gate-generations-{name}"


def open_shared(url: URL, data_dir: Path) -> SharedGenerations | None:
    """The shared counters for this database, or None (then each process has only its own
    evictions: the cache is still correct within the process and, on PostgreSQL, NOTIFY
    reaches the others)."""
    path = path_for(url, data_dir)
    if path is None:
        return None
    try:
        return SharedGenerations(path)
    except OSError as exc:
        log.warning(
            "cannot share consent-cache generations at %s (%s): other processes learn of "
            "changes only through NOTIFY (PostgreSQL) or their cache time",
            path,
            type(exc).__name__,
        )
        return None
