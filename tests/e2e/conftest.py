"""End-to-end fixtures: the real ``consentgate`` CLI and server processes over loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from consentgate.bootstrap import build
from consentgate.config import load_settings
from tests import pg

BIN = Path(sys.executable).parent / "consentgate"


@dataclass
class Server:
    url: str
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes]
    tenants: dict[str, dict[str, Any]] = field(default_factory=dict)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN), *args], env=self.env, capture_output=True, text=True, check=check, timeout=60
        )

    def create_tenant(self, name: str, region: str = "GB", *, cli: bool = False) -> dict[str, Any]:
        """A tenant, as ``consentgate tenant create`` makes it: by default through the same
        service in this process (a CLI process costs ~2 s of CPU to start, and the suite
        makes dozens of tenants); ``cli=True`` runs the command itself."""
        if cli:
            out = self.cli("tenant", "create", name, "--region", region).stdout
        else:
            app = build(load_settings(self.env))
            try:
                out = json.dumps(app.tenants.create(name, region))
            finally:
                app.close()
        created: dict[str, Any] = json.loads(out)
        self.tenants[name] = created
        return created

    def client(self, api_key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10)


def _start(env: dict[str, str], log: Path, *args: str) -> Server:
    port = pg.free_port()
    # The sandbox carrier is served by the same process and called back over HTTP.
    env = {**env, "CONSENTGATE_PUBLIC_URL": f"http://127.0.0.1:{port}"}
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [str(BIN), "serve", "--host", "127.0.0.1", "--port", str(port), *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90  # a loaded machine: worker processes import slowly
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return Server(url, env, log, process)
        except httpx.TransportError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"server did not start:\n{log.read_text()}")


@pytest.fixture
def server(env: dict[str, str], tmp_path: Path) -> Iterator[Server]:
    full_env = {**os.environ, **env}
    srv = _start(full_env, tmp_path / "server.log")
    try:
        yield srv
    finally:
        srv.process.terminate()
        try:
            srv.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            srv.process.kill()


@pytest.fixture
def own_pg(backend: str) -> Iterator[pg.Cluster | None]:
    """On PostgreSQL, a cluster for this test alone (None on SQLite). For the scans of
    everything a run left on disk: pg_wal is shared by every database in a cluster, so in the
    session's cluster a scan also reads what earlier tests wrote (under xdist, whichever ran
    before on the same worker) and cannot tell whose bytes it found."""
    if backend != "pg":
        yield None
        return
    if os.environ.get("CONSENTGATE_TEST_NO_PG"):
        pytest.skip("PostgreSQL half disabled by CONSENTGATE_TEST_NO_PG")
    try:
        cluster = pg.start_cluster(prefix="consentgate-own-")
    except FileNotFoundError as missing:
        pytest.skip(f"{missing}: the PostgreSQL half of this test is skipped")
    try:
        yield cluster
    finally:
        pg.destroy(cluster)


@pytest.fixture
def own_env(own_pg: pg.Cluster | None, tmp_path: Path) -> dict[str, str]:
    """Like ``env``, but on PostgreSQL the database lives in ``own_pg`` (migrated by the
    server at its start)."""
    if own_pg is None:
        url = f"sqlite:///{tmp_path / 'var' / 'consentgate.db'}"
    else:
        own_pg.execute("CREATE DATABASE consentgate")
        url = own_pg.url("consentgate")
    return {
        "CONSENTGATE_DATA_DIR": str(tmp_path / "var"),
        "CONSENTGATE_DATABASE_URL": url,
        "CONSENTGATE_SQLITE_SYNCHRONOUS": "NORMAL",
    }
