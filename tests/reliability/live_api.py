"""A live ``consentgate serve`` for the API-surface scenarios (schemathesis, tenant isolation,
hostile webhook bodies), and a digest of every table to prove that a refused request changed
nothing.

One server per backend is shared by those scenarios (``scope="package"``): starting one costs
seconds, and each scenario works in tenants of its own. It runs with ``--no-workers`` so that
nothing but the requests under test writes to the database: a digest taken after one call is
the digest before the next, and any difference after a refused call is the call's doing.

The PostgreSQL half uses the session's shared cluster (``pg_cluster``), not the reliability
scenarios' own (those stop and kill theirs).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests import pg
from tests.e2e.conftest import Server, _start

_names = itertools.count()


@dataclass
class LiveApi:
    """The server, its database (read directly for digests) and the tenants made for it."""

    backend: str
    server: Server
    database_url: str
    engine: sa.Engine
    rbm_token: str
    twilio_token: str
    tenants: dict[str, dict[str, Any]] = field(default_factory=dict)
    tables: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    def tenant(self, prefix: str) -> dict[str, Any]:
        """A new tenant (through the CLI, as an operator makes one): its name, owner API key
        (every scope) and webhook secret."""
        name = f"{prefix}-{os.getpid()}-{next(_names)}"
        created = self.server.create_tenant(name)
        self.tenants[name] = created
        return created

    def client(self, api_key: str | None = None, **kwargs: Any) -> httpx.Client:
        return self.server.client(api_key) if not kwargs else _client(self.url, api_key, **kwargs)

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    def digest(self) -> dict[str, str]:
        """SHA-256 of each table's rows (order-independent): equal digests, equal contents."""
        out: dict[str, str] = {}
        with self.engine.connect() as conn:
            if not self.tables:
                self.tables = sorted(sa.inspect(conn).get_table_names())
            for name in self.tables:
                rows = conn.execute(sa.text(f'SELECT * FROM "{name}"')).all()
                encoded = sorted(json.dumps([repr(v) for v in row]) for row in rows)
                out[name] = hashlib.sha256("\n".join(encoded).encode()).hexdigest()
        return out


def changed_tables(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return sorted(t for t in before.keys() | after.keys() if before.get(t) != after.get(t))


def _client(url: str, api_key: str | None, **kwargs: Any) -> httpx.Client:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(base_url=url, headers=headers, timeout=10, **kwargs)


def _database_url(request: pytest.FixtureRequest, backend: str, data_dir: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{data_dir / 'consentgate.db'}"
    cluster: pg.Cluster = request.getfixturevalue("pg_cluster")
    name = f"live_{os.getpid()}_{next(_names)}"
    cluster.execute(f"CREATE DATABASE {name} TEMPLATE cg_template")
    return cluster.url(name)


@pytest.fixture(scope="package", params=["sqlite", "pg"])
def live_api(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveApi]:
    backend = str(request.param)
    base = tmp_path_factory.mktemp(f"live-{backend}")
    data_dir = base / "var"
    url = _database_url(request, backend, data_dir)
    rbm_token, twilio_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    env = {
        **os.environ,
        # The sandbox carrier's credentials, known here so that tests can sign callbacks.
        "CONSENTGATE_SANDBOX_RBM_TOKEN": rbm_token,
        "CONSENTGATE_SANDBOX_TWILIO_TOKEN": twilio_token,
        "CONSENTGATE_DATA_DIR": str(data_dir),
        "CONSENTGATE_DATABASE_URL": url,
        "CONSENTGATE_SQLITE_SYNCHRONOUS": "NORMAL",
    }
    server = _start(env, base / "server.log", "--no-workers")
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        yield LiveApi(backend, server, url, engine, rbm_token, twilio_token)
    finally:
        engine.dispose()
        server.process.terminate()
        try:
            server.process.wait(timeout=10)
        except Exception:
            server.process.kill()
