"""After a delete commits: make the deleted bytes leave the database files, as far as each
engine allows.

* SQLite: every connection runs with ``PRAGMA secure_delete=ON`` (:mod:`storage.engine`), so a
  deleted or rewritten row's bytes are zeroed in its page. The write-ahead log still holds
  earlier images of those pages; a ``wal_checkpoint(TRUNCATE)`` copies the zeroed pages into
  the database file and empties the log. It waits (busy timeout) for readers on an older
  snapshot; if one outlives that, the answer says ``busy`` and the next checkpoint finishes it.
* PostgreSQL: a DELETE or UPDATE leaves the old row version in place until VACUUM prunes it, so
  the touched tables are vacuumed (autocommit; VACUUM cannot run in a transaction). Pruning
  removes the row from the heap and its indexes, and compacting the page usually overwrites
  its bytes, but PostgreSQL does not zero the free space of a page: the bytes of a row that
  sat at the edge of that free space can stay in the file until the page is rewritten.
  ANALYZE runs with it, and ``pg_statistic`` is vacuumed after: the planner's statistics
  sample column values (hashed ids among them) and would otherwise keep the old sample.
  ``VACUUM FULL`` (``full=True``, ``consentgate retention run --compact``) rewrites each table
  into a new file and does remove them, at the price of an exclusive lock while it runs. WAL
  segments, archives, replicas and backups keep older bytes regardless (docs/privacy.md).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from consentgate.storage.tables import metadata

log = logging.getLogger("consentgate.privacy")


class StorageScrubber:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def after_delete(self, tables: Sequence[str], *, full: bool = False) -> dict[str, Any]:
        """Push deleted bytes out of the files. Never raises: the delete is already committed,
        and a failure here is reported (and logged) for the operator to retry."""
        if self._engine.dialect.name == "postgresql":
            return self._vacuum(tables, full)
        return self._checkpoint(full)

    def _checkpoint(self, full: bool) -> dict[str, Any]:
        raw = self._engine.raw_connection()
        try:
            cursor = raw.cursor()
            secure = cursor.execute("PRAGMA secure_delete").fetchone()
            if full:
                cursor.execute("VACUUM")  # rebuilds the file: free pages are dropped too
            busy, _log_frames, _done = cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            cursor.close()
        except (sqlite3.Error, SQLAlchemyError) as exc:  # reported, not raised (see above)
            log.warning("SQLite checkpoint after delete failed (%s)", type(exc).__name__)
            return {"engine": "sqlite", "wal_checkpoint": "failed"}
        finally:
            raw.close()
        return {
            "engine": "sqlite",
            "secure_delete": bool(secure and secure[0]),
            "wal_checkpoint": "busy" if busy else "complete",
            **({"vacuum": "full"} if full else {}),
        }

    def _vacuum(self, tables: Sequence[str], full: bool) -> dict[str, Any]:
        known = [t for t in dict.fromkeys(tables) if t in metadata.tables]
        done: list[str] = []
        failed: list[str] = []
        with self._engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            options = "FULL, ANALYZE" if full else "ANALYZE"
            for table in known:
                try:
                    # Names come from the schema (checked above), never from input.
                    conn.exec_driver_sql(f'VACUUM ({options}) "{table}"')
                    done.append(table)
                except SQLAlchemyError as exc:
                    log.warning("VACUUM of %s failed (%s)", table, type(exc).__name__)
                    failed.append(table)
            if done:
                # ANALYZE redrew the planner's sample of each table's values (a histogram
                # of hashed ids, for one); the superseded statistics rows are dead tuples
                # of pg_statistic until it is vacuumed too. Without the privilege (database
                # owner) PostgreSQL skips this with a warning; autovacuum gets there later.
                try:
                    conn.exec_driver_sql(f"VACUUM {'FULL ' if full else ''}pg_catalog.pg_statistic")
                except SQLAlchemyError as exc:
                    log.warning("VACUUM of pg_statistic failed (%s)", type(exc).__name__)
                    failed.append("pg_statistic")
        report: dict[str, Any] = {
            "engine": "postgresql",
            "vacuum": "full" if full else "plain",
            "vacuumed": done,
        }
        if not full:
            report["residual"] = (
                "PostgreSQL does not zero a page's free space: bytes of pruned rows may stay in "
                "the table files until `consentgate retention run --compact` rewrites them"
            )
        if failed:
            report["failed"] = failed
        return report
