"""Backup, restore and verification afterwards, on a real SQLite file and a real PostgreSQL.

SQLite is copied with ``consentgate backup`` (the sqlite3 backup API) while a thread keeps
ingesting; PostgreSQL with ``pg_dump`` and ``pg_restore`` into a new database, as the
operations guide tells an operator to. The restored store is then checked with the CLI the
operator runs: ``ledger verify`` must pass, prove the ledger extends a checkpoint saved before
the backup, report one saved after it (the restore lost those events), and name a leaf
tampered in the restored copy.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from consentgate.bootstrap import App, build
from consentgate.cli import cli
from consentgate.config import load_settings
from consentgate.consent.ingest import EventInput
from consentgate.domain.clock import FixedClock
from consentgate.ledger.checkpoint import Checkpoint, signature_line
from consentgate.storage.engine import read_tx
from tests import pg

runner = CliRunner()


def _events(start: int, count: int) -> list[EventInput]:
    return [
        EventInput(
            consent_id=f"bk-{i}",
            consent_type="marketing_rcs",
            status="withdrawn" if i % 5 == 4 else "granted",
            timestamp=f"2026-10-{1 + i % 27:02d}T10:00:00Z",
            phone=f"+4479112{i % 11:05d}",
        )
        for i in range(start, start + count)
    ]


def _run(env: dict[str, str], *args: str) -> tuple[int, Any]:
    result = runner.invoke(cli, list(args), env=env)
    try:
        out = json.loads(result.stdout)
    except ValueError:
        out = result.stdout
    return result.exit_code, out


def _save_checkpoint(env: dict[str, str], out: Path) -> tuple[Path, int]:
    code, written = _run(env, "ledger", "checkpoint", "--tenant", "acme", "--out", str(out))
    assert code == 0, written
    return Path(written["acme"]["file"]), int(written["acme"]["tree_size"])


def _backup(
    request: pytest.FixtureRequest, backend: str, env: dict[str, str], target: Path
) -> None:
    if backend == "sqlite":
        code, report = _run(env, "backup", "--to", str(target))
        assert code == 0, report
        assert report["backup"] == str(target)
        assert (target.stat().st_mode & 0o777) == 0o600
        return
    cluster: pg.Cluster = request.getfixturevalue("pg_cluster")
    database = env["CONSENTGATE_DATABASE_URL"].rsplit("/", 1)[1]
    subprocess.run(
        [str(cluster.bindir / "pg_dump"), "-Fc", "-f", str(target), cluster.admin_dsn(database)],
        check=True,
        capture_output=True,
        timeout=120,
    )


def _restore(
    request: pytest.FixtureRequest, backend: str, env: dict[str, str], dump: Path, name: str
) -> dict[str, str]:
    """A fresh store from ``dump``; the key directory is the original's (backed up apart)."""
    restored = dict(env)
    restored["CONSENTGATE_KEY_DIR"] = str(Path(env["CONSENTGATE_DATA_DIR"]) / "keys")
    restored["CONSENTGATE_DATA_DIR"] = str(dump.parent / name)
    if backend == "sqlite":
        Path(restored["CONSENTGATE_DATA_DIR"]).mkdir()
        db = Path(restored["CONSENTGATE_DATA_DIR"]) / "consentgate.db"
        shutil.copyfile(dump, db)
        restored["CONSENTGATE_DATABASE_URL"] = f"sqlite:///{db}"
        return restored
    cluster: pg.Cluster = request.getfixturevalue("pg_cluster")
    database = f"r_{os.getpid()}_{name}"
    cluster.execute(f"CREATE DATABASE {database}")
    subprocess.run(
        [str(cluster.bindir / "pg_restore"), "--no-owner", "-d", cluster.admin_dsn(database), dump],
        check=True,
        capture_output=True,
        timeout=120,
    )
    restored["CONSENTGATE_DATABASE_URL"] = cluster.url(database)
    return restored


@pytest.fixture
def saved(core: App, tenant: dict[str, Any], tmp_path: Path) -> App:
    core.ingest.ingest("acme", "GB", _events(0, 6), batch=True)
    return core


def test_restore_verifies_and_extends_the_checkpoint_saved_before(
    request: pytest.FixtureRequest,
    backend: str,
    env: dict[str, str],
    saved: App,
    tmp_path: Path,
) -> None:
    before, before_size = _save_checkpoint(env, tmp_path / "before")
    assert before_size == 6
    saved.ingest.ingest("acme", "GB", _events(6, 4), batch=True)  # size 10
    # The backup is taken while another thread keeps ingesting: it must hold a consistent
    # snapshot of whatever had committed when it began.
    stop = threading.Event()
    written = [10]

    def ingest() -> None:
        while not stop.is_set() and written[0] < 200:
            saved.ingest.ingest("acme", "GB", _events(written[0], 5), batch=True)
            written[0] += 5

    writer = threading.Thread(target=ingest)
    writer.start()
    try:
        _backup(request, backend, env, tmp_path / "backup.db")
    finally:
        stop.set()
        writer.join()
    saved.ingest.ingest("acme", "GB", _events(written[0], 3), batch=True)
    after, after_size = _save_checkpoint(env, tmp_path / "after")
    assert after_size == written[0] + 3  # every acknowledged event

    restored = _restore(request, backend, env, tmp_path / "backup.db", "r1")
    code, reports = _run(restored, "ledger", "verify", "--against-checkpoint", str(before))
    assert code == 0, reports
    (report,) = reports
    assert 10 <= report["tree_size"] <= written[0]
    (extends,) = report["extends"]
    assert extends["checkpoint_size"] == 6
    assert extends["tree_size"] == report["tree_size"]
    assert extends["proof_hashes"] > 0  # a real consistency proof, not an equal-size compare

    code, problem = _run(restored, "ledger", "verify", "--against-checkpoint", str(after))
    assert code == 1
    assert problem["ok"] is False
    assert problem["reason"] == "behind"
    assert problem["missing"] == after_size - report["tree_size"]

    # The live store itself extends both checkpoints.
    code, live = _run(
        env, "ledger", "verify", "--against-checkpoint", str(before), "--against-checkpoint",
        str(after),
    )  # fmt: skip
    assert code == 0, live
    assert [e["checkpoint_size"] for e in live[0]["extends"]] == [6, after_size]


def test_backup_refuses_to_overwrite(
    backend: str, env: dict[str, str], saved: App, tmp_path: Path
) -> None:
    target = tmp_path / "exists.db"
    target.write_bytes(b"keep me")
    result = runner.invoke(cli, ["backup", "--to", str(target)], env=env)
    assert result.exit_code == 2
    assert target.read_bytes() == b"keep me"
    if backend == "pg":  # PostgreSQL has its own tools; the command says so and does nothing
        result = runner.invoke(cli, ["backup", "--to", str(tmp_path / "new.db")], env=env)
        assert result.exit_code == 2
        assert "pg_dump" in result.stderr
        assert not (tmp_path / "new.db").exists()
    else:
        assert "never overwrites" in result.stderr
        assert not list(tmp_path.glob(".exists.db.partial-*"))


def test_tampered_leaf_in_a_restored_store_is_named(
    request: pytest.FixtureRequest,
    backend: str,
    env: dict[str, str],
    saved: App,
    tmp_path: Path,
) -> None:
    _backup(request, backend, env, tmp_path / "backup.db")
    restored = _restore(request, backend, env, tmp_path / "backup.db", "r2")
    _forge_leaf(restored, backend, seq=3)
    code, problem = _run(restored, "ledger", "verify")
    assert code == 1
    assert problem["first_bad_seq"] == 3


def test_a_checkpoint_of_another_history_is_reported_as_forked(
    env: dict[str, str], saved: App, tmp_path: Path
) -> None:
    """Signed with the tenant's own key but over other leaves: the ledger is not its future."""
    origin = saved.ledger.origin("acme")
    body = Checkpoint(origin, 4, bytes(range(32))).body()
    sig = saved.keystore.sign("acme", body)
    note = body.decode() + "\n" + signature_line(origin, sig.public_key, sig.signature)
    path = tmp_path / "other.checkpoint"
    path.write_text(note)
    code, problem = _run(env, "ledger", "verify", "--against-checkpoint", str(path))
    assert code == 1
    assert problem["reason"] == "forked"

    path.write_text(note.replace(body.decode().splitlines()[1], "5", 1))  # signature broken
    code, problem = _run(env, "ledger", "verify", "--against-checkpoint", str(path))
    assert code == 1
    assert problem["reason"] == "signature"


def _forge_leaf(restored: dict[str, str], backend: str, seq: int) -> None:
    """Flip a status inside a leaf's bytes, with the append-only triggers out of the way."""
    url = restored["CONSENTGATE_DATABASE_URL"]
    if backend == "sqlite":
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            conn.execute("DROP TRIGGER IF EXISTS ledger_entries_no_update")
            leaf = conn.execute("SELECT leaf FROM ledger_entries WHERE seq = ?", (seq,)).fetchone()
            forged = bytes(leaf[0]).replace(b'"granted"', b'"withdrawn"')
            conn.execute("UPDATE ledger_entries SET leaf = ? WHERE seq = ?", (forged, seq))
        return
    import psycopg

    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE ledger_entries DISABLE TRIGGER USER")
        conn.execute(
            "UPDATE ledger_entries SET leaf = convert_to(replace(convert_from(leaf, 'UTF8'),"
            " '\"granted\"', '\"withdrawn\"'), 'UTF8') WHERE seq = %s",
            (seq,),
        )


def test_saved_checkpoint_covers_every_acknowledged_event_when_signing_is_deferred(
    env: dict[str, str], clock: FixedClock, tmp_path: Path
) -> None:
    """With checkpoint workers signing (none running here), `ledger checkpoint` signs the head
    itself: a restore check against it then counts every acknowledged event."""
    deferred = {**env, "CONSENTGATE_CHECKPOINT_ON_COMMIT": "false"}
    app = build(load_settings(deferred), clock=clock)
    try:
        app.tenants.create("acme", "GB")
        app.ingest.ingest("acme", "GB", _events(0, 7), batch=True)
        with read_tx(app.engine) as conn:
            assert app.ledger.newest_checkpoint(conn, "acme") is None  # nothing signed yet
        path, size = _save_checkpoint(deferred, tmp_path / "cp")
        assert size == 7
        code, reports = _run(deferred, "ledger", "verify", "--against-checkpoint", str(path))
        assert code == 0, reports
        assert reports[0]["extends"][0]["checkpoint_size"] == 7
    finally:
        app.close()
