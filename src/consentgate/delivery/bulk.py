"""Set-based writes for a dispatch batch: many rows in one statement on PostgreSQL.

An executemany is one statement per row for the server: on SQLite that is cheap (the engine
is in-process, one prepared statement), on PostgreSQL each row is still parsed, planned and
executed by the server, and a batch of 500 recipients wrote ~2,500 of them. On PostgreSQL an
insert here is one multi-row ``VALUES`` per chunk and an update one ``UPDATE … FROM (VALUES
…)``; on SQLite both stay an executemany (measured: a 500-row ``VALUES`` with named parameters
cost twice the CPU of the executemany there). The SQL is built
from our own table and column names, never from input; values are bound parameters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection

from consentgate.storage import lean

_MAX_PARAMS = 30_000  # under SQLite's 32,766 and PostgreSQL's 65,535 bound parameters


def _chunks(rows: Sequence[Mapping[str, Any]], width: int) -> list[Sequence[Mapping[str, Any]]]:
    size = max(1, _MAX_PARAMS // max(1, width))
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def insert_rows(
    conn: Connection,
    table: str,
    columns: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    suffix: str = "",
) -> None:
    """``INSERT INTO table (columns) VALUES (...), (...) <suffix>`` in as few statements as
    the parameter limits allow on PostgreSQL, an executemany on SQLite (``suffix``: e.g.
    ``ON CONFLICT DO NOTHING``)."""
    if not rows:
        return
    if conn.dialect.name != "postgresql":
        # SQLite resolves each named parameter by a linear search of those seen before: a
        # statement with thousands of them costs more than the executemany it replaces.
        lean.many(conn, f"{lean.insert_sql(table, columns)} {suffix}", rows)
        return
    one = f"({', '.join(['%s'] * len(columns))})"
    for chunk in _chunks(rows, len(columns)):
        params = [row[column] for row in chunk for column in columns]
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES "  # noqa: S608
        conn.exec_driver_sql(sql + ", ".join([one] * len(chunk)) + f" {suffix}", tuple(params))


def update_rows(
    conn: Connection,
    table: str,
    keys: Mapping[str, str],
    values: Mapping[str, str],
    rows: Sequence[Mapping[str, Any]],
    fixed: str = "",
) -> None:
    """Set ``values`` of the rows matched by ``keys`` (both: column → its SQL type, for
    PostgreSQL's casts), each row's from ``rows`` (dicts keyed by column name, keys included).
    ``fixed``: more ``col = <sql>`` assignments, the same for every row."""
    if not rows:
        return
    assigned = [*values]
    if conn.dialect.name != "postgresql":
        sets = [f"{c} = :{c}" for c in assigned] + ([fixed] if fixed else [])
        where = " AND ".join(f"{k} = :{k}" for k in keys)
        lean.many(conn, f"UPDATE {table} SET {', '.join(sets)} WHERE {where}", rows)  # noqa: S608
        return
    columns = [*keys, *assigned]
    types = {**keys, **values}
    first = f"({', '.join(f'%s::{types[c]}' for c in columns)})"
    rest = f"({', '.join(['%s'] * len(columns))})"
    sets = [f"{c} = v.{c}" for c in assigned] + ([fixed] if fixed else [])
    where = " AND ".join(f"t.{k} = v.{k}" for k in keys)
    for chunk in _chunks(rows, len(columns)):
        params = [row[column] for row in chunk for column in columns]
        # The first row's casts type the VALUES columns (the others' unknowns follow them).
        values_sql = ", ".join([first] + [rest] * (len(chunk) - 1))
        sql = (
            f"UPDATE {table} AS t SET {', '.join(sets)} "  # noqa: S608
            f"FROM (VALUES {values_sql}) AS v ({', '.join(columns)}) WHERE {where}"
        )
        conn.exec_driver_sql(sql, tuple(params))
