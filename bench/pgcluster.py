"""A throwaway PostgreSQL cluster for the benchmark, built on ``tests/pg.py``.

The test helper starts its cluster with ``fsync=off`` and ``synchronous_commit=off`` (fast
tests). A benchmark compared with SQLite at ``synchronous=FULL`` must not do that, so this one
keeps PostgreSQL's durable defaults and changes only where it listens.
"""

from __future__ import annotations

import psycopg
from tests import pg

DURABILITY = "fsync=on, synchronous_commit=on, full_page_writes=on (PostgreSQL defaults)"


class DurableCluster(pg.Cluster):
    SETTINGS = ""  # PostgreSQL's durable defaults

    def server_version(self) -> str:
        with psycopg.connect(self.admin_dsn()) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "?"

    def dsn(self, db: str) -> str:
        return self.admin_dsn(db)


def start() -> DurableCluster:
    """Start a cluster; ``FileNotFoundError`` when no PostgreSQL binaries are installed."""
    return pg.start_cluster(DurableCluster, prefix="consentgate-bench-pg-")


def destroy(cluster: DurableCluster) -> None:
    pg.destroy(cluster)
