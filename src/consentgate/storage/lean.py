"""Lean statements for the hottest write path (ingest): plain SQL run on the driver's cursor
of a SQLAlchemy connection, inside that connection's transaction.

Measured on the test machine, one ``conn.execute(select(...).where(...))`` costs ~290 µs of
CPU in SQLAlchemy before the driver sees it (building the expression, its cache key, the
execution context, the result wrapper); a prebuilt statement ~65 µs, ``text()`` ~55 µs; the
driver's own ``cursor.execute`` ~4 µs. An ingest commit runs a dozen statements, so for a
single-event webhook they were most of the request's CPU. The statements here are few, fixed
and reviewed; everything else keeps using SQLAlchemy Core.

SQL is written once with ``:name`` placeholders (SQLite's own style) and converted for
psycopg (``%(name)s``) on first use. Driver errors are re-raised as SQLAlchemy's
(``IntegrityError``, ``OperationalError``...), so callers handle one family of exceptions, and
a lost PostgreSQL connection is invalidated as SQLAlchemy would do it.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, StatementError

_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")

Row = tuple[Any, ...]


@lru_cache(maxsize=1024)
def _for_dialect(sql: str, dialect: str) -> str:
    if dialect == "sqlite":
        return sql
    return _NAMED.sub(r"%(\1)s", sql.replace("%", "%%"))


def placeholders(prefix: str, values: Sequence[Any], params: dict[str, Any]) -> str:
    """``:p0, :p1, ...`` for an IN list, with the values added to ``params``."""
    names = []
    for i, value in enumerate(values):
        params[f"{prefix}{i}"] = value
        names.append(f":{prefix}{i}")
    return ", ".join(names)


@contextmanager
def _translated(conn: Connection, sql: str, params: Any) -> Iterator[None]:
    dbapi = conn.dialect.loaded_dbapi
    try:
        yield
    except dbapi.Error as exc:
        disconnected = conn.dialect.is_disconnect(exc, conn.connection.dbapi_connection, None)
        if disconnected:
            conn.invalidate(exc)
        raise DBAPIError.instance(
            sql,
            params,
            exc,
            dbapi.Error,
            hide_parameters=True,
            connection_invalidated=disconnected,
            dialect=conn.dialect,
        ) from exc


def rows(conn: Connection, sql: str, params: Mapping[str, Any]) -> list[Row]:
    """Run one statement; its rows as tuples (empty for statements without rows)."""
    text = _for_dialect(sql, conn.dialect.name)
    with _translated(conn, text, params):
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(text, params)
            return list(cursor.fetchall()) if cursor.description is not None else []
        finally:
            cursor.close()


#: SQLite: each thread's own read connection per engine (see :func:`read`). Dropped with
#: the engine (weak keys); a thread's connection goes with the thread.
_readers: weakref.WeakKeyDictionary[Engine, threading.local] = weakref.WeakKeyDictionary()
_readers_lock = threading.Lock()


def _sqlite_read(engine: Engine, text: str, params: Mapping[str, Any]) -> list[Row]:
    """SQLite's lean read: on this thread's own connection, kept open (a pool checkout and
    return, with its rollback, cost ~60 µs of CPU, more than the statement). The connection
    comes from the engine, so it has the engine's pragmas; it runs in autocommit, so each
    statement reads one consistent snapshot and holds nothing once it is done."""
    local = _readers.get(engine)
    if local is None:
        with _readers_lock:
            local = _readers.setdefault(engine, threading.local())
    raw = getattr(local, "conn", None)
    if raw is None:
        raw = engine.raw_connection()
        raw.detach()  # this thread's for good: never back to the pool
        local.conn = raw
    try:
        return _fetch(raw.dbapi_connection, text, params)
    except engine.dialect.loaded_dbapi.Error as exc:
        local.conn = None
        raw.close()
        raise _driver_error(engine, text, params, exc, invalidated=False) from exc


def read(engine: Engine, sql: str, params: Mapping[str, Any]) -> list[Row]:
    """One read statement on a driver connection, outside any transaction (SQLite's driver
    runs in autocommit here; PostgreSQL's is switched to it for the statement): a single
    statement sees one snapshot either way, and there is no BEGIN/COMMIT to pay."""
    text = _for_dialect(sql, engine.dialect.name)
    if engine.dialect.name == "sqlite":
        return _sqlite_read(engine, text, params)
    raw = engine.raw_connection()
    try:
        driver = raw.driver_connection
        postgres = engine.dialect.name == "postgresql"
        if postgres:
            driver.autocommit = True  # type: ignore[union-attr]
        try:
            return _fetch(raw, text, params)
        finally:
            if postgres:
                driver.autocommit = False  # type: ignore[union-attr]
    except engine.dialect.loaded_dbapi.Error as exc:
        disconnected = engine.dialect.is_disconnect(exc, raw.dbapi_connection, None)
        if disconnected:
            raw.invalidate(exc)
        raise _driver_error(engine, text, params, exc, invalidated=disconnected) from exc
    finally:
        raw.close()


def _fetch(connection: Any, text: str, params: Mapping[str, Any]) -> list[Row]:
    cursor = connection.cursor()
    try:
        cursor.execute(text, params)
        return list(cursor.fetchall())
    finally:
        cursor.close()


def _driver_error(
    engine: Engine, text: str, params: Any, exc: Exception, *, invalidated: bool
) -> StatementError:
    """The driver's error as SQLAlchemy's (parameters hidden: they may be hashed ids)."""
    return DBAPIError.instance(
        text,
        params,
        exc,
        engine.dialect.loaded_dbapi.Error,
        hide_parameters=True,
        connection_invalidated=invalidated,
        dialect=engine.dialect,
    )


def run(conn: Connection, sql: str, params: Mapping[str, Any]) -> int:
    """Run one statement without rows; the number of rows it changed."""
    text = _for_dialect(sql, conn.dialect.name)
    with _translated(conn, text, params):
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(text, params)
            return int(cursor.rowcount)
        finally:
            cursor.close()


def many(conn: Connection, sql: str, seq: Sequence[Mapping[str, Any]]) -> None:
    """Run one statement once per parameter set (an executemany: one prepared statement)."""
    if not seq:
        return
    text = _for_dialect(sql, conn.dialect.name)
    with _translated(conn, text, seq):
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.executemany(text, seq)
        finally:
            cursor.close()


def insert_rows(
    conn: Connection,
    table: str,
    columns: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    suffix: str = "",
) -> None:
    """Insert ``rows`` (mappings by column name); ``suffix`` follows the VALUES (an
    ``ON CONFLICT`` clause). SQLite: one statement run per row (``executemany``, a loop in C).
    PostgreSQL: one multi-row ``VALUES`` statement per chunk: one round trip, where psycopg's
    ``executemany`` pipelines a statement per row (its Python cost per row was a good part
    of an ingest commit)."""
    if not rows:
        return
    if conn.dialect.name != "postgresql":
        many(conn, insert_sql(table, columns) + suffix, rows)
        return
    per = max(1, 30_000 // len(columns))  # PostgreSQL takes up to 65,535 parameters
    for start in range(0, len(rows), per):
        chunk = rows[start : start + per]
        sql = _multi_insert(table, tuple(columns), suffix, len(chunk))
        params = [row[c] for row in chunk for c in columns]
        with _translated(conn, sql, params):
            cursor = psycopg.RawCursor(conn.connection.driver_connection)  # type: ignore[arg-type]
            try:
                cursor.execute(sql, params)
            finally:
                cursor.close()


@lru_cache(maxsize=256)
def _multi_insert(table: str, columns: tuple[str, ...], suffix: str, n: int) -> str:
    """PostgreSQL text of an ``n``-row insert with native ``$n`` placeholders, run through
    a RawCursor: psycopg parses a ``%s`` query in Python on every execute once it has more
    than 50 parameters (it caches only smaller ones)."""
    width = len(columns)
    values = ", ".join(
        "(" + ", ".join(f"${r * width + c + 1}" for c in range(width)) + ")" for r in range(n)
    )
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES {values}{suffix}"  # noqa: S608


def insert_sql(table: str, columns: Sequence[str]) -> str:
    """``INSERT INTO table (a, b) VALUES (:a, :b)`` (names are ours, never input)."""
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) "  # noqa: S608
        f"VALUES ({', '.join(':' + c for c in columns)})"
    )
