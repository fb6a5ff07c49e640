"""Online backup of the SQLite store: one consistent copy while the service keeps writing.

Copying ``consentgate.db`` with ``cp`` while the service runs is not a backup: the file and
its ``-wal`` change under the copy, and committed transactions may sit only in the WAL. The
sqlite3 backup API copies pages through SQLite itself; done in one step it reads a single
snapshot (under WAL a reader blocks no writer, so ingest goes on) and the copy holds exactly
the transactions committed when it began. The copy is written beside the target under a
temporary name, made a self-contained rollback-journal file, checked (``PRAGMA
integrity_check``), synced, and only then linked to the target name, which must not exist:
a backup never overwrites anything, and a crash leaves no half-written file under that name.

PostgreSQL is backed up with its own tools (``pg_dump``, ``pg_basebackup`` with WAL
archiving); ``docs/operations.md`` has the runbook. The key directory is not in either: it
holds the salts, signing keys and master key, and is backed up separately, elsewhere.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from consentgate.errors import InvalidInput


@dataclass(frozen=True)
class BackupReport:
    path: Path
    bytes: int
    tenants: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {"backup": str(self.path), "bytes": self.bytes, "tenants": self.tenants}


def sqlite_path(engine: Engine) -> Path:
    if engine.dialect.name != "sqlite":
        raise InvalidInput(
            "consentgate backup copies a SQLite store; back up PostgreSQL with pg_dump or "
            "pg_basebackup (docs/operations.md, 'Backup and restore')",
            field="database_url",
        )
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        raise InvalidInput("the SQLite store is not a plain file", field="database_url")
    return Path(database)


def backup_sqlite(engine: Engine, target: Path) -> BackupReport:
    """Copy the store behind ``engine`` to ``target`` (which must not exist)."""
    source_path = sqlite_path(engine)
    if not source_path.is_file():
        raise InvalidInput(f"no SQLite store at {source_path}", field="database_url")
    target = target.absolute()
    if target.exists() or target.is_symlink():
        raise InvalidInput(f"{target} exists; a backup never overwrites a file", field="to")
    if not target.parent.is_dir():
        raise InvalidInput(f"{target.parent} is not a directory", field="to")
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    partial.unlink(missing_ok=True)
    # Owner-only from the first byte: the copy holds what the store holds.
    os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        source = sqlite3.connect(source_path, timeout=30.0)
        try:
            copy = sqlite3.connect(partial)
            try:
                source.backup(copy)  # pages=-1: the whole database in one step, one snapshot
                copy.execute("PRAGMA journal_mode=DELETE")
                problems = [row[0] for row in copy.execute("PRAGMA integrity_check")]
                if problems != ["ok"]:
                    raise InvalidInput(
                        f"the copy failed its integrity check: {problems[:3]}", field="to"
                    )
                tenants = _checkpoints(copy)
            finally:
                copy.close()
        finally:
            source.close()
        fd = os.open(partial, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(partial, target)  # fails if the target appeared meanwhile: no overwrite
        except FileExistsError:
            raise InvalidInput(
                f"{target} exists; a backup never overwrites a file", field="to"
            ) from None
        _fsync_dir(target.parent)
    finally:
        partial.unlink(missing_ok=True)
    return BackupReport(target, target.stat().st_size, tenants)


def _checkpoints(copy: sqlite3.Connection) -> list[dict[str, Any]]:
    """Each tenant's tree size and latest signed checkpoint as the copy holds them."""
    rows = copy.execute(
        "SELECT h.tenant_id, h.tree_size, "
        "(SELECT c.note FROM checkpoints c WHERE c.tenant_id = h.tenant_id "
        " ORDER BY c.tree_size DESC LIMIT 1) "
        "FROM ledger_heads h ORDER BY h.tenant_id"
    )
    return [
        {"tenant": tenant, "tree_size": int(size), "checkpoint": note}
        for tenant, size, note in rows
    ]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["BackupReport", "backup_sqlite", "sqlite_path"]
