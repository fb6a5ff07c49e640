"""Shared fixtures: every storage test runs on a real SQLite file and a real PostgreSQL."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from consentgate.bootstrap import App, build
from consentgate.config import load_settings
from consentgate.domain.clock import FixedClock
from consentgate.storage.engine import build_engine, migrate
from tests import pg

_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[pg.Cluster]:
    if os.environ.get("CONSENTGATE_TEST_NO_PG"):
        pytest.skip("PostgreSQL half disabled by CONSENTGATE_TEST_NO_PG")
    try:
        cluster = pg.start_cluster()
    except FileNotFoundError:
        pytest.skip(
            "PostgreSQL binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin "
            "or on PATH: the PostgreSQL half of this test is skipped"
        )
    try:
        cluster.execute("CREATE DATABASE cg_template")
        engine = build_engine(
            load_settings({"CONSENTGATE_DATABASE_URL": cluster.url("cg_template")}).storage
        )
        migrate(engine)
        engine.dispose()
        yield cluster
    finally:
        pg.destroy(cluster)


def fresh_database_url(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'var' / 'consentgate.db'}"
    cluster: pg.Cluster = request.getfixturevalue("pg_cluster")
    name = f"t_{os.getpid()}_{next(_counter)}"
    cluster.execute(f"CREATE DATABASE {name} TEMPLATE cg_template")
    return cluster.url(name)


@pytest.fixture(params=["sqlite", "pg"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def env(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> dict[str, str]:
    """Environment for a fresh consentgate on ``backend`` with its own data dir."""
    return {
        "CONSENTGATE_DATA_DIR": str(tmp_path / "var"),
        "CONSENTGATE_DATABASE_URL": fresh_database_url(request, backend, tmp_path),
        "CONSENTGATE_SQLITE_SYNCHRONOUS": "NORMAL",
    }


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
def core(env: dict[str, str], clock: FixedClock) -> Iterator[App]:
    app = build(load_settings(env), clock=clock)
    yield app
    app.close()


@pytest.fixture
def tenant(core: App) -> dict[str, Any]:
    return core.tenants.create("acme", "GB")
