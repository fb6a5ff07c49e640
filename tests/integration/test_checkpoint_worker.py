"""Checkpoints signed by workers (CONSENTGATE_CHECKPOINT_ON_COMMIT=false), on both stores:
an append only moves the head; a pass signs each moved head once; a tenant another signer
holds is skipped, never signed twice; receipts and exports sign on demand; and two real
``consentgate worker --kind checkpoint`` processes on one PostgreSQL sign every tree size
they reach exactly once, each checkpoint verifying."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from consentgate.bootstrap import App, build
from consentgate.config import load_settings
from consentgate.consent.ingest import EventInput
from consentgate.domain.clock import FixedClock
from consentgate.domain.timeutil import format_rfc3339
from consentgate.ledger.checkpoint import verify_note
from consentgate.ledger.signer import CheckpointSigner
from consentgate.ledger.verify import verify_tenant
from consentgate.storage.engine import read_tx, write_tx


@pytest.fixture
def deferred(env: dict[str, str], clock: FixedClock) -> Iterator[App]:
    app = build(load_settings({**env, "CONSENTGATE_CHECKPOINT_ON_COMMIT": "false"}), clock=clock)
    yield app
    app.close()


def _ingest(app: App, tenant: str, start: int, count: int) -> list[str]:
    """Record ``count`` grants in one commit; their subjects' hashed ids."""
    now = format_rfc3339(app.clock.now())
    results = app.ingest.ingest(
        tenant,
        "GB",
        [
            EventInput(f"{tenant}-{n}", "marketing_rcs", "granted", now, phone=f"+4479111{n:05d}")
            for n in range(start, start + count)
        ],
        batch=True,
    )
    return [r.hashed_id for r in results]


def _signed_sizes(app: App, tenant: str) -> list[int]:
    with read_tx(app.engine) as conn:
        return [
            int(r[0])
            for r in conn.execute(
                text("SELECT tree_size FROM checkpoints WHERE tenant_id = :t ORDER BY tree_size"),
                {"t": tenant},
            )
        ]


def _size(app: App, tenant: str) -> int:
    with read_tx(app.engine) as conn:
        return app.ledger.tree_size(conn, tenant)


def test_a_pass_signs_each_moved_head_once(deferred: App) -> None:
    app = deferred
    for name in ("acme", "globex", "initech"):
        app.tenants.create(name, "GB")
    _ingest(app, "acme", 0, 3)
    _ingest(app, "acme", 3, 2)
    _ingest(app, "globex", 0, 4)
    assert _signed_sizes(app, "acme") == [] and _signed_sizes(app, "globex") == []
    with read_tx(app.engine) as conn:
        assert app.ledger.moved_tenants(conn) == ["acme", "globex"]  # initech has no leaves
        verify_tenant(conn, "acme", app.ledger)  # an unsigned tail is no tampering here

    signer = CheckpointSigner(app.engine, app.ledger, app.clock)
    first = signer.run_once()
    assert first.signed == [("acme", 5), ("globex", 4)]  # the heads, not each commit
    assert signer.run_once().signed == []  # nothing moved since
    _ingest(app, "globex", 4, 1)
    assert signer.run_once().signed == [("globex", 5)]
    for name in ("acme", "globex"):
        with read_tx(app.engine) as conn:
            report = verify_tenant(conn, name, app.ledger)
            note = app.ledger.latest_checkpoint(conn, name).note
        assert verify_note(note, app.ledger.verifier_keys(name)).size == report.tree_size == 5
    assert _signed_sizes(app, "globex") == [4, 5]


def test_a_tenant_held_by_another_signer_is_skipped(deferred: App, backend: str) -> None:
    if backend != "pg":
        pytest.skip("SQLite has one writer: a second signer waits for it instead of skipping")
    app = deferred
    app.tenants.create("acme", "GB")
    _ingest(app, "acme", 0, 2)
    signer = CheckpointSigner(app.engine, app.ledger, app.clock)
    with write_tx(app.engine) as other:  # another worker, mid-signature
        other.exec_driver_sql(
            "SELECT pg_advisory_xact_lock(hashtextextended('consentgate.checkpoint/acme', 0))"
        )
        assert signer.run_once(ensure_partitions=False).signed == []
    assert signer.run_once(ensure_partitions=False).signed == [("acme", 2)]
    assert _signed_sizes(app, "acme") == [2]


def test_receipts_and_exports_sign_on_demand(deferred: App) -> None:
    app = deferred
    app.tenants.create("acme", "GB")
    hashed = _ingest(app, "acme", 0, 3)[1]
    receipt = app.receipts.receipt("acme", hashed, "marketing_rcs")
    assert _signed_sizes(app, "acme") == [3]
    assert verify_note(receipt["checkpoint"], app.ledger.verifier_keys("acme")).size == 3
    newcomer = _ingest(app, "acme", 3, 1)[0]  # the head moves past the checkpoint again
    app.exports.export("acme", hashed)  # its leaves are covered: nothing more to sign
    assert _signed_sizes(app, "acme") == [3]
    bundle = json.loads(app.exports.export("acme", newcomer))
    assert _signed_sizes(app, "acme") == [3, 4]
    assert verify_note(bundle["checkpoint"], app.ledger.verifier_keys("acme")).size == 4


def test_the_in_process_worker_signs_moved_heads(env: dict[str, str], clock: FixedClock) -> None:
    """What ``serve`` (and ``worker --kind checkpoint``) start: App.start_background."""
    app = build(
        load_settings(
            {
                **env,
                "CONSENTGATE_CHECKPOINT_ON_COMMIT": "false",
                "CONSENTGATE_CHECKPOINT_INTERVAL_SECONDS": "0.02",
            }
        ),
        clock=clock,
    )
    try:
        app.tenants.create("acme", "GB")
        app.start_background(kinds=("checkpoint",))
        _ingest(app, "acme", 0, 2)
        _ingest(app, "acme", 2, 2)
        deadline = time.monotonic() + 30
        while _signed_sizes(app, "acme")[-1:] != [4]:
            assert time.monotonic() < deadline, "the in-process worker signed nothing"
            time.sleep(0.02)
    finally:
        app.close()
    assert set(_signed_sizes(app, "acme")) <= {2, 4}


def test_on_commit_signing_leaves_the_worker_nothing(core: App) -> None:
    core.tenants.create("acme", "GB")
    _ingest(core, "acme", 0, 2)
    assert _signed_sizes(core, "acme") == [2]
    assert CheckpointSigner(core.engine, core.ledger, core.clock).run_once().signed == []


# -- two worker processes ---------------------------------------------------------------------
def _start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            str(Path(sys.executable).with_name("consentgate")),
            "worker",
            "--kind",
            "checkpoint",
        ],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )


def _records(log: Path) -> list[dict[str, Any]]:
    found = []
    for line in log.read_text().splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return found


def _trouble(logs: list[Path]) -> list[dict[str, Any]]:
    return [r for g in logs for r in _records(g) if r.get("level") in ("warning", "error")]


def test_two_worker_processes_sign_each_tree_size_once(
    env: dict[str, str], backend: str, tmp_path: Path
) -> None:
    if backend != "pg":
        pytest.skip("several worker processes are the PostgreSQL deployment")
    worker_env = {
        **env,
        "CONSENTGATE_CHECKPOINT_ON_COMMIT": "false",
        "CONSENTGATE_CHECKPOINT_INTERVAL_SECONDS": "0.02",
        "CONSENTGATE_LOG_FORMAT": "json",
    }
    app = build(load_settings(worker_env))  # migrates and makes the keys before the workers
    tenants = ("acme", "globex", "initech")
    for name in tenants:
        app.tenants.create(name, "GB")
    logs = [tmp_path / "worker-a.log", tmp_path / "worker-b.log"]
    workers = [_start_worker(worker_env, log) for log in logs]
    try:
        deadline = time.monotonic() + 60
        while not all(
            any(r.get("message", "").startswith("consentgate worker running") for r in _records(g))
            for g in logs
        ):
            assert time.monotonic() < deadline, "the workers did not start"
            assert all(w.poll() is None for w in workers), "a worker exited"
            time.sleep(0.05)
        for round_ in range(12):  # heads move while both workers sign
            for name in tenants:
                _ingest(app, name, round_ * 3, 1 + round_ % 3)
            time.sleep(0.01)
        while any(
            _signed_sizes(app, name)[-1:] != [_size(app, name)] for name in tenants
        ):  # wait for the last heads to be signed
            assert _trouble(logs) == []  # a failed pass or a refused duplicate: say which
            assert time.monotonic() < deadline, "the workers did not catch up"
            time.sleep(0.05)
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            w.wait(timeout=30)
    signed = [
        (r["tenant"], r["tree_size"])
        for log in logs
        for r in _records(log)
        if r.get("message") == "checkpoint signed"
    ]
    assert _trouble(logs) == []  # no failed pass, no refused duplicate
    twice = [k for k, n in Counter(signed).items() if n > 1]
    assert twice == [], f"tree sizes signed more than once: {twice}"
    per_worker = [
        sum(1 for r in _records(g) if r.get("message") == "checkpoint signed") for g in logs
    ]
    print(f"checkpoints signed by each worker: {per_worker}, none twice")
    for name in tenants:
        sizes = _signed_sizes(app, name)
        assert sorted(s for t, s in signed if t == name) == sizes  # every row logged once
        assert sizes[-1] == _size(app, name)
        with read_tx(app.engine) as conn:
            report = verify_tenant(conn, name, app.ledger)
            notes = [
                str(r[0])
                for r in conn.execute(
                    text("SELECT note FROM checkpoints WHERE tenant_id = :t"), {"t": name}
                )
            ]
        assert report.checkpoints == len(sizes)
        keys = app.ledger.verifier_keys(name)
        assert sorted(verify_note(n, keys).size for n in notes) == sizes
    app.close()
