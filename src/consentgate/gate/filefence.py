"""Send fences for SQLite (:mod:`consentgate.gate.fence`): byte-range locks on a file beside
the database, one byte per key.

Every process of a SQLite database runs on its host, so the host's kernel can be the lock
manager: a sender takes a shared lock on each of its keys' bytes (sorted) and holds them until
its sends are over; a withdrawal, after its commit, takes each withdrawn key's byte
exclusively and lets it go at once, polling (so it never blocks while holding one, and it
gives up at its deadline). The locks are Linux open-file-description locks (``F_OFD_*``):
unlike ``lockf``'s, they conflict between two threads of one process (``serve`` runs the
dispatch worker beside the API), and they go with the descriptor, so a killed sender's locks
are gone at once. Where the platform has no OFD locks there is no file fence (the revoker
still withdraws a late message at the provider).

The file holds no data, nothing about any person: only locks on its (sparse) bytes.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import time
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy.engine import URL

SLOTS = 1 << 20  # bytes (keys) of the sparse lock file; keys sharing one only wait longer
_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", None)
_OFD_SETLKW = getattr(fcntl, "F_OFD_SETLKW", None)
_POLL = 0.002


def path_for(url: URL) -> Path | None:
    """``<database>-fence`` beside a SQLite file; None for an in-memory database or where
    the platform has no OFD locks."""
    database = url.database
    if _OFD_SETLK is None or not database or database == ":memory:":
        return None
    if database.startswith("file:"):
        return None
    return Path(database).resolve().with_name(Path(database).name + "-fence")


def _lock(fd: int, kind: int, offset: int, wait: bool) -> bool:
    request = _OFD_SETLKW if wait else _OFD_SETLK
    assert request is not None
    try:
        fcntl.fcntl(fd, request, struct.pack("@hhqqi", kind, os.SEEK_SET, offset, 1, 0))
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


class FileFence:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _open(self) -> int:
        return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)

    def hold(self, offsets: Iterable[int]) -> int:
        """Shared locks on these bytes; returns the descriptor that holds them (close it
        to let go). Raises OSError."""
        fd = self._open()
        try:
            for offset in sorted(set(offsets)):
                _lock(fd, fcntl.F_RDLCK, offset, wait=True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def wait(self, offsets: Iterable[int], seconds: float) -> bool:
        """Until no shared lock is held on any of these bytes (one at a time); False if
        the deadline came first. Raises OSError."""
        deadline = time.monotonic() + seconds
        fd = self._open()
        try:
            for offset in sorted(set(offsets)):
                while not _lock(fd, fcntl.F_WRLCK, offset, wait=False):
                    if time.monotonic() > deadline:
                        return False
                    time.sleep(_POLL)
                _lock(fd, fcntl.F_UNLCK, offset, wait=False)
        finally:
            os.close(fd)
        return True
