"""The database engine: SQLite (WAL, foreign keys, busy timeout) or PostgreSQL (psycopg 3).

Writes on SQLite start with ``BEGIN IMMEDIATE`` so two writers queue on the busy timeout
instead of deadlocking on a lock upgrade; reads start deferred and never block a writer
under WAL. Migrations (Alembic) are applied by :func:`migrate`, at start-up.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from importlib import resources
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, pool
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError

from consentgate.config import StorageSettings
from consentgate.errors import StoreUnavailable

_WRITE = "consentgate_write"
_turns: weakref.WeakKeyDictionary[Engine, WriterTurn] = weakref.WeakKeyDictionary()


def build_engine(settings: StorageSettings) -> Engine:
    url = settings.database_url
    if url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            poolclass=pool.QueuePool,
            pool_size=settings.pool_size,
            max_overflow=settings.pool_size,
            connect_args={"check_same_thread": False, "timeout": settings.busy_timeout_ms / 1000},
        )
        _configure_sqlite(engine, settings)
        database = engine.url.database
        if database and database != ":memory:" and not database.startswith("file:"):
            _turns[engine] = WriterTurn(
                Path(database).with_name(Path(database).name + "-writer"),
                settings.busy_timeout_ms / 1000,
            )
        return engine
    engine = create_engine(
        url,
        pool_size=settings.pool_size,
        max_overflow=settings.pool_size,
        # No server-side auto-prepare: a generic plan cached for an IN list of hundreds of
        # values went badly wrong as tables grew (hundreds of ms per statement, seen in
        # the benchmark); planning each statement costs far less than that.
        connect_args={"connect_timeout": 5, "prepare_threshold": None},
    )
    _ping_when_idle(engine)
    return engine


#: A pooled PostgreSQL connection idle longer than this is pinged before it is handed out.
IDLE_PING_SECONDS = 1.0


def _ping_when_idle(engine: Engine) -> None:
    """Pessimistic disconnect handling, but only where it can matter.

    ``pool_pre_ping`` pinged on *every* checkout: a round trip and ~0.4 ms of CPU (measured:
    a consent lookup on PostgreSQL cost 1.11 ms of CPU with it, 0.68 ms without), paid by
    every statement of the service. A connection in steady use has just proved it is alive;
    one that sat in the pool may have been cut (a database restart, a failover, an idle
    timeout). So only connections idle for more than :data:`IDLE_PING_SECONDS` are pinged,
    and a dead one is replaced before anyone uses it (``DisconnectionError`` makes the pool
    retry with a fresh connection). A connection that dies while busy fails its statement:
    SQLAlchemy then recycles every pooled connection older than the failure, and the caller
    gets ``StoreUnavailable`` (fail closed)."""

    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop("idle_since", None)
        if since is None or time.monotonic() - since < IDLE_PING_SECONDS:
            return
        try:
            dbapi_conn.execute("SELECT 1")
            dbapi_conn.rollback()
        except dbapi_conn.Error as exc:  # psycopg's base error: the connection is gone
            raise DisconnectionError("pooled connection failed its ping") from exc


def _configure_sqlite(engine: Engine, settings: StorageSettings) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from the driver so BEGIN is ours to issue.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(settings.busy_timeout_ms)}")
        cursor.execute(f"PRAGMA synchronous={settings.sqlite_synchronous}")
        # Deleted and overwritten content is zeroed, not just unlinked: an erased subject's
        # link (or a purged sealed number) must not survive in free pages of the file.
        cursor.execute("PRAGMA secure_delete=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get(_WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class WriterTurn:
    """Whose turn it is to write one SQLite file, across this process's threads and every
    process of the file: a threading lock, then an ``flock`` on ``<database>-writer``.

    Without it, a writer that finds the file locked waits in SQLite's busy handler, which
    sleeps 1, 2, 5, 10, ... up to 100 ms between tries: with two server processes, one kept
    the lock batch after batch while the other slept (p99 150 ms at a few hundred commits a
    second). A blocked ``flock`` is woken by the kernel as soon as the lock is released. It
    is held from BEGIN IMMEDIATE to the end of COMMIT or ROLLBACK of one write transaction;
    SQLite's own lock and busy timeout still apply underneath (other statements, other
    tools)."""

    def __init__(self, path: Path, timeout: float) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self._local = threading.Lock()
        self._timeout = timeout

    @contextmanager
    def held(self) -> Iterator[None]:
        if not self._local.acquire(timeout=self._timeout):
            raise StoreUnavailable("the consent store is busy; nothing was changed. Retry.")
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._local.release()


@contextmanager
def write_tx(engine: Engine) -> Iterator[Connection]:
    """One write transaction: committed on success, rolled back on any error."""
    turn = _turns.get(engine)
    with _translated(), engine.connect() as conn:
        conn.execution_options(**{_WRITE: True})
        with turn.held() if turn is not None else nullcontext(), conn.begin():
            yield conn


@contextmanager
def read_tx(engine: Engine) -> Iterator[Connection]:
    with _translated(), engine.connect() as conn, conn.begin():
        yield conn


@contextmanager
def snapshot_tx(engine: Engine) -> Iterator[Connection]:
    """A read transaction whose statements all see one snapshot, for answers assembled from
    several reads (an audit export). PostgreSQL runs it REPEATABLE READ (read_tx is READ
    COMMITTED there); a SQLite read transaction already sees one snapshot from its first read."""
    with _translated(), engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            yield conn


@contextmanager
def single_read(engine: Engine) -> Iterator[Connection]:
    """For one-statement reads on a hot path. On PostgreSQL it runs in autocommit, saving
    the BEGIN and COMMIT round trips (under READ COMMITTED a single statement sees the same
    data either way); on SQLite it is :func:`read_tx`."""
    if engine.dialect.name != "postgresql":
        with read_tx(engine) as conn:
            yield conn
        return
    with _translated(), engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        yield conn


@contextmanager
def _translated() -> Iterator[None]:
    """Connection-level failures become StoreUnavailable, so callers can fail closed."""
    try:
        yield
    except OperationalError as exc:
        raise StoreUnavailable("the consent store is unavailable; nothing was changed") from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise StoreUnavailable("the consent store connection was lost") from exc
        raise


translated = _translated  # for reads made outside these context managers (storage.lean)


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(resources.files("consentgate") / "migrations"))
    return config


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (idempotent; safe with concurrent starters on
    PostgreSQL thanks to an advisory lock)."""
    config = alembic_config()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7242201)")
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
