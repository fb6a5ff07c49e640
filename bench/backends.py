"""The two stores and the raw-driver baselines that sit beside each figure.

A baseline does the same database work with the bare driver (``sqlite3`` / ``psycopg``): no
SQLAlchemy, no service code. It is what the figure would be if the service added nothing.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg

from consentgate.ledger import merkle
from consentgate.ledger.store import ENTRY_COLUMNS

ENTRY_TYPES = ("varchar", "int8", "varchar", "varchar", "varchar", "varchar", "int8", "int8")
ENTRY_TYPES += ("varchar", "bytea", "bytea", "bytea")
NODE_TYPES = ("varchar", "int2", "int8", "bytea")
LINK_COLUMNS = ("tenant_id", "hashed_id", "salt_version", "subject_ref", "created_us")
STATE_COLUMNS = (
    "tenant_id",
    "subject_ref",
    "consent_type",
    "status",
    "effective_us",
    "event_seq",
    "consent_id",
    "expires_us",
    "updated_us",
)
_PG_TYPES = {
    "ledger_entries": ENTRY_TYPES,
    "plain_entries": ENTRY_TYPES,
    "ledger_nodes": NODE_TYPES,
    "subject_links": ("varchar", "varchar", "int4", "varchar", "int8"),
    "consent_state": ("varchar",) * 4 + ("int8", "int8", "varchar", "int8", "int8"),
    "bench_audience": ("varchar",),
}

# ledger_entries' columns, primary key, unique constraint and index; no foreign key.
_PLAIN_SQLITE = """
CREATE TABLE plain_entries (
    tenant_id VARCHAR(63) NOT NULL, seq BIGINT NOT NULL, event_id VARCHAR(36) NOT NULL,
    subject_ref VARCHAR(36) NOT NULL, consent_type VARCHAR(64) NOT NULL,
    status VARCHAR(16) NOT NULL, ts_us BIGINT NOT NULL, received_us BIGINT NOT NULL,
    consent_id VARCHAR(200) NOT NULL, content_hash BLOB NOT NULL, leaf BLOB NOT NULL,
    leaf_hash BLOB NOT NULL,
    PRIMARY KEY (tenant_id, seq), UNIQUE (tenant_id, consent_id)
);
CREATE INDEX ix_plain_subject ON plain_entries (tenant_id, subject_ref, seq);
"""
_PLAIN_PG = _PLAIN_SQLITE.replace("BLOB", "BYTEA")

_LOOKUP = (
    "SELECT s.consent_type, s.status, s.effective_us, s.event_seq, s.consent_id "
    "FROM subject_links l JOIN consent_state s "
    "ON s.tenant_id = l.tenant_id AND s.subject_ref = l.subject_ref "
    "WHERE l.tenant_id = {p} AND l.hashed_id = {p}"
)

Row = tuple[Any, ...]


class Backend:
    """Where a run's data lives, plus the raw-driver operations for baselines."""

    name: str
    param: str
    durability: str
    database_url: str
    server_log: Path | None = None  # the database server's own log, where there is one

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.data_dir = workdir / "var"

    @property
    def env(self) -> dict[str, str]:
        return {
            "CONSENTGATE_DATA_DIR": str(self.data_dir),
            "CONSENTGATE_DATABASE_URL": self.database_url,
        }

    def connect(self) -> Any:
        raise NotImplementedError

    def begin(self, conn: Any) -> None:
        raise NotImplementedError

    def commit(self, conn: Any) -> None:
        raise NotImplementedError

    def plain_insert(self, batches: Sequence[Sequence[Row]]) -> list[float]:
        """Insert each batch in its own committed transaction into a fresh plain table;
        seconds per batch."""
        raise NotImplementedError

    # -- lookups ----------------------------------------------------------------------------
    def lookup_sql(self) -> str:
        return _LOOKUP.format(p=self.param)

    def lookup(self, conn: Any, sql: str, tenant: str, hashed_id: str) -> list[Row]:
        raise NotImplementedError

    def point_select(self, conn: Any, sql: str, params: Sequence[Any]) -> list[Row]:
        """One statement, all rows, on a bare autocommit connection (prepared on PG)."""
        raise NotImplementedError

    def temp_table(self, conn: Any, table: str) -> None:
        """A temporary one-column table of hashed ids, as core.gate.prefilter makes it."""
        conn.execute(f"CREATE TEMPORARY TABLE {table} (hashed_id VARCHAR(64) PRIMARY KEY)")

    # -- bulk load (the proof tree) -----------------------------------------------------------
    def bulk_insert(
        self, conn: Any, table: str, columns: Sequence[str], rows: Sequence[Row]
    ) -> None:
        """Insert ``rows`` inside the caller's transaction, the driver's fastest way."""
        raise NotImplementedError

    # -- proofs -----------------------------------------------------------------------------
    def nodes_sql(self, tenant: str, inner: list[merkle.Coord]) -> tuple[str, list[Any]]:
        """The inner-node fetch of a proof as one statement: one primary-key point lookup
        per node, UNION ALL-ed."""
        p = self.param
        one = f"SELECT level, idx, hash FROM ledger_nodes WHERE tenant_id = {p} "
        one += f"AND level = {p} AND idx = {p}"
        params = [v for level, idx in inner for v in (tenant, level, idx)]
        return " UNION ALL ".join([one] * len(inner)), params

    def raw_proof(self, conn: Any, tenant: str, seq: int) -> tuple[int, bytes, list[bytes]]:
        """LedgerStore.inclusion_proof's work in bare SQL: the tree size, then the plan's leaf
        hashes and inner nodes, in one read transaction."""
        p = self.param
        self.begin(conn)
        size = int(
            conn.execute(
                f"SELECT tree_size FROM ledger_heads WHERE tenant_id = {p}", (tenant,)
            ).fetchone()[0]
        )
        plan = merkle.inclusion_proof_plan(seq, size)
        coords = merkle.plan_coords(plan) | {(0, seq)}
        leaves = sorted(idx for level, idx in coords if level == 0)
        inner = sorted((level, idx) for level, idx in coords if level > 0)
        lookup: dict[merkle.Coord, bytes] = {}
        marks = ", ".join([p] * len(leaves))
        for s, value in conn.execute(
            f"SELECT seq, leaf_hash FROM ledger_entries WHERE tenant_id = {p} AND seq IN ({marks})",
            (tenant, *leaves),
        ):
            lookup[(0, int(s))] = bytes(value)
        if inner:
            sql, params = self.nodes_sql(tenant, inner)
            for level, idx, value in conn.execute(sql, params):
                lookup[(int(level), int(idx))] = bytes(value)
        self.commit(conn)
        return size, lookup[(0, seq)], merkle.build_proof(plan, lookup)

    def replay(self, conn: Any, statements: list[tuple[str, Any]]) -> None:
        """Run statements captured from the service (its own SQL and parameters) in one read
        transaction through the bare driver, fetching every row."""
        self.begin(conn)
        for sql, params in statements:
            conn.execute(sql, params).fetchall()
        self.commit(conn)

    def analyze(self) -> str | None:
        """Refresh planner statistics where the server would do it by itself (autovacuum);
        returns what was done, or None."""
        return None

    def explain(self, conn: Any, sql: str, params: Any) -> str:
        raise NotImplementedError


class SqliteBackend(Backend):
    name = "sqlite"
    param = "?"

    def __init__(self, workdir: Path, synchronous: str = "FULL") -> None:
        super().__init__(workdir)
        self.synchronous = synchronous
        self.db_path = self.data_dir / "consentgate.db"
        self.database_url = f"sqlite:///{self.db_path}"
        self.durability = f"journal_mode=WAL, synchronous={synchronous} (consentgate defaults)"

    def _open(self, path: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA busy_timeout=10000")
        return conn

    def connect(self) -> sqlite3.Connection:
        return self._open(self.db_path)

    def begin(self, conn: Any) -> None:
        conn.execute("BEGIN")

    def commit(self, conn: Any) -> None:
        conn.execute("COMMIT")

    def plain_insert(self, batches: Sequence[Sequence[Row]]) -> list[float]:
        path = self.workdir / "plain-baseline.db"
        path.unlink(missing_ok=True)
        conn = self._open(path)
        try:
            conn.executescript(_PLAIN_SQLITE)
            sql = (
                f"INSERT INTO plain_entries ({', '.join(ENTRY_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(ENTRY_COLUMNS))})"
            )
            times: list[float] = []
            for batch in batches:
                t0 = time.perf_counter()
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(sql, batch)
                conn.execute("COMMIT")
                times.append(time.perf_counter() - t0)
            return times
        finally:
            conn.close()

    def lookup(self, conn: Any, sql: str, tenant: str, hashed_id: str) -> list[Row]:
        return list(conn.execute(sql, (tenant, hashed_id)).fetchall())

    def point_select(self, conn: Any, sql: str, params: Sequence[Any]) -> list[Row]:
        return list(conn.execute(sql, params).fetchall())

    def explain(self, conn: Any, sql: str, params: Any) -> str:
        rows = conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
        details = [str(r[-1]) for r in rows]
        return " | ".join(details[:4]) + (
            f" | … ({len(details)} steps)" if len(details) > 4 else ""
        )

    def bulk_insert(
        self, conn: Any, table: str, columns: Sequence[str], rows: Sequence[Row]
    ) -> None:
        marks = ", ".join("?" * len(columns))
        conn.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)


class PostgresBackend(Backend):
    name = "postgresql"
    param = "%s"

    def __init__(
        self, workdir: Path, dsn: str, url: str, durability: str, server_log: Path | None = None
    ) -> None:
        super().__init__(workdir)
        self.server_log = server_log
        self.dsn = dsn
        self.database_url = url
        self.durability = durability

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn, autocommit=True)

    def begin(self, conn: Any) -> None:
        conn.execute("BEGIN")

    def commit(self, conn: Any) -> None:
        conn.execute("COMMIT")

    def analyze(self) -> str | None:
        # A fresh cluster has no statistics; autovacuum would gather them within a minute
        # (autovacuum_naptime), which a short benchmark can miss or hit at random. Without
        # them the planner misjudges the ingest's IN-list queries as data grows.
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("ANALYZE")
        return "ANALYZE (what autovacuum does on its own), untimed"

    def plain_insert(self, batches: Sequence[Sequence[Row]]) -> list[float]:
        with psycopg.connect(self.dsn) as conn:
            conn.execute("DROP TABLE IF EXISTS plain_entries")
            for statement in _PLAIN_PG.split(";"):
                if statement.strip():
                    conn.execute(statement)  # type: ignore[call-overload]
            conn.commit()
            times: list[float] = []
            for batch in batches:
                t0 = time.perf_counter()
                self.bulk_insert(conn, "plain_entries", ENTRY_COLUMNS, batch)
                conn.commit()
                times.append(time.perf_counter() - t0)
            conn.execute("DROP TABLE plain_entries")
            conn.commit()
            return times

    def lookup(self, conn: Any, sql: str, tenant: str, hashed_id: str) -> list[Row]:
        return list(conn.execute(sql, (tenant, hashed_id), prepare=True).fetchall())

    def point_select(self, conn: Any, sql: str, params: Sequence[Any]) -> list[Row]:
        return list(conn.execute(sql, params, prepare=True).fetchall())

    def explain(self, conn: Any, sql: str, params: Any) -> str:
        rows = conn.execute("EXPLAIN " + sql, params).fetchall()  # type: ignore[operator]
        details = [str(r[0]).strip()[:160] for r in rows]
        return " | ".join(details[:4]) + (
            f" | … ({len(details)} lines)" if len(details) > 4 else ""
        )

    def bulk_insert(
        self, conn: Any, table: str, columns: Sequence[str], rows: Sequence[Row]
    ) -> None:
        sql = f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
        with conn.cursor() as cur, cur.copy(sql) as copy:  # type: ignore[arg-type]
            copy.set_types(list(_PG_TYPES[table]))
            for row in rows:
                copy.write_row(row)
