"""A throwaway PostgreSQL cluster for the test session (initdb/pg_ctl in a temp dir).

initdb refuses to run as root, so as root the cluster belongs to the ``postgres`` user and
its commands run through ``runuser``. Where no binaries exist the PostgreSQL half of the
suite is skipped with a message saying so; it is never faked.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import psycopg


def find_bindir() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if candidates:
        return Path(candidates[0]).parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    bindir: Path
    base: Path
    port: int
    as_user: str | None

    @property
    def datadir(self) -> Path:
        return self.base / "data"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if self.as_user:
            cmd = ["runuser", "-u", self.as_user, "--", *cmd]
        return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)

    def admin_dsn(self, db: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={db}"

    def url(self, db: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{db}"

    # Fast tests: nothing here must survive a power cut. (The benchmark overrides this.)
    SETTINGS = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 "
            f"{self.SETTINGS}-c max_connections=200"
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

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "stop")

    def execute(self, sql: str, db: str = "postgres") -> None:
        with psycopg.connect(self.admin_dsn(db), autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]


C = TypeVar("C", bound=Cluster)


def start_cluster(kind: type[C] = Cluster, prefix: str = "consentgate-pg-") -> C:  # type: ignore[assignment]
    bindir = find_bindir()
    if bindir is None:
        raise FileNotFoundError(
            "PostgreSQL binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin "
            "or on PATH"
        )
    as_user = "postgres" if os.geteuid() == 0 else None
    base = Path(tempfile.mkdtemp(prefix=prefix))
    if as_user:
        shutil.chown(base, user=as_user)
    cluster = kind(bindir, base, free_port(), as_user)
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


def destroy(cluster: Cluster) -> None:
    try:
        cluster.stop("immediate")
    finally:
        shutil.rmtree(cluster.base, ignore_errors=True)
