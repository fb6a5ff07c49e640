"""A throwaway PostgreSQL cluster for the benchmark, built on ``tests/pg.py``.

The test helper starts its cluster with ``fsync=off`` and ``synchronous_commit=off`` (fast
tests). A benchmark compared with SQLite at ``synchronous=FULL`` must not do that, so this one
keeps PostgreSQL's durable defaults and changes only where it listens.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg
from tests import pg

DURABILITY = "fsync=on, synchronous_commit=on, full_page_writes=on (PostgreSQL defaults)"


class DurableCluster(pg.Cluster):
    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c max_connections=200"
        )
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.datadir),
            "-o",
            options,
            "-l",
            str(self.base / "server.log"),
            "-w",
            "start",
        )

    def server_version(self) -> str:
        with psycopg.connect(self.admin_dsn()) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "?"

    def dsn(self, db: str) -> str:
        return self.admin_dsn(db)


def start() -> DurableCluster:
    """Start a cluster; ``FileNotFoundError`` when no PostgreSQL binaries are installed."""
    bindir = pg.find_bindir()
    if bindir is None:
        raise FileNotFoundError(
            "PostgreSQL binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin "
            "or on PATH"
        )
    as_user = "postgres" if os.geteuid() == 0 else None
    base = Path(tempfile.mkdtemp(prefix="consentgate-bench-pg-"))
    if as_user:
        shutil.chown(base, user=as_user)
    cluster = DurableCluster(bindir, base, pg.free_port(), as_user)
    try:
        cluster._run(
            str(bindir / "initdb"),
            "-D",
            str(cluster.datadir),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        cluster.start()
    except (OSError, subprocess.SubprocessError):
        shutil.rmtree(base, ignore_errors=True)
        raise
    return cluster


def destroy(cluster: DurableCluster) -> None:
    pg.destroy(cluster)
