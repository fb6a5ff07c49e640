"""Reliability suite fixtures. The process machinery (carrier, serve, workers, the suite's own
PostgreSQL cluster) is in :mod:`tests.reliability.procs`."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from consentgate.config import load_settings
from consentgate.storage.engine import build_engine, migrate
from tests import pg
from tests.reliability.live_api import live_api  # noqa: F401 - H3's shared live server
from tests.reliability.procs import ReliabilityCluster


@pytest.fixture(scope="session")
def rel_cluster() -> Iterator[ReliabilityCluster]:
    """A PostgreSQL cluster for this directory alone (scenarios stop and kill it), with a
    migrated template database each stack copies."""
    if os.environ.get("CONSENTGATE_TEST_NO_PG"):
        pytest.skip("PostgreSQL half disabled by CONSENTGATE_TEST_NO_PG")
    try:
        cluster = pg.start_cluster(ReliabilityCluster, "consentgate-rel-")
    except FileNotFoundError:
        pytest.skip(
            "PostgreSQL binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin "
            "or on PATH: the PostgreSQL scenarios are skipped"
        )
    try:
        cluster.execute("CREATE DATABASE rel_template")
        url = cluster.url("rel_template")
        engine = build_engine(load_settings({"CONSENTGATE_DATABASE_URL": url}).storage)
        migrate(engine)
        engine.dispose()
        yield cluster
    finally:
        pg.destroy(cluster)
