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

    def create_tenant(self, name: str, region: str = "GB") -> dict[str, Any]:
        created: dict[str, Any] = json.loads(
            self.cli("tenant", "create", name, "--region", region).stdout
        )
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
    deadline = time.monotonic() + 30
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
