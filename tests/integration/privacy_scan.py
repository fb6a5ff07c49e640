"""Scans for erasure tests: every row of every table, and the database's files on disk."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import Engine, select

from consentgate.storage.tables import metadata


def rows_containing(engine: Engine, needles: Iterable[str | bytes]) -> dict[str, list[str]]:
    """{table: [column, ...]} for every value, in any column of any table of the schema,
    that contains one of ``needles`` (text, or bytes in a binary column)."""
    wanted = [(n.encode() if isinstance(n, str) else n) for n in needles]
    found: dict[str, list[str]] = {}
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(select(table)):
                for column, value in row._mapping.items():
                    if isinstance(value, str):
                        data = value.encode()
                    elif isinstance(value, (bytes, bytearray, memoryview)):
                        data = bytes(value)
                    else:
                        continue
                    if any(n in data for n in wanted):
                        found.setdefault(table.name, []).append(str(column))
    return found


def files_containing(paths: Iterable[Path], needles: Iterable[str | bytes]) -> list[str]:
    """The files (and which needle) whose raw bytes contain one of ``needles``."""
    wanted = [(n.encode() if isinstance(n, str) else n) for n in needles]
    hits: list[str] = []
    for path in paths:
        if not path.is_file():
            continue
        data = path.read_bytes()
        hits.extend(f"{path.name}: {n[:12]!r}..." for n in wanted if n in data)
    return hits
