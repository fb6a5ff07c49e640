"""A 10,000-recipient campaign end to end, then a scan of everything it left behind — the
database files (WAL included; on PostgreSQL every file of a cluster of its own, since the
session's shared cluster keeps every earlier test's writes in its WAL, and the server log),
the key directory and every process's log — for any of the 10,000 numbers, in any
form that contains its national significant number (E.164 with or without +, national
with 0). The carrier runs in its own process (``python -m consentgate.sandbox``), as in the
campaign benchmark, and a dispatch worker process works the queue beside ``serve``; the
carrier's memory is the only place the numbers may be."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from tests import pg
from tests.e2e.conftest import BIN, Server, _start

N = 10_000
PHONES = [f"+4479111{i:05d}" for i in range(N)]
NSN = {p[3:].encode() for p in PHONES}  # 79111xxxxx: inside every written form of the number
# A digit run that touches a hex letter is part of a hex token (a hashed id, a UUID): one of
# 10,000 "79111xxxxx" windows turns up by chance in the hex of ~10k hashed ids often enough
# (a few % of runs, seen once on PostgreSQL's WAL) to make the scan flaky, and no written form
# of a phone number sits between hex letters.
_DIGITS = re.compile(rb"(?<![0-9a-fA-F])\d{10,}(?![0-9a-fA-F])")


def numbers_in(data: bytes) -> set[bytes]:
    """Which of the campaign's numbers appear in ``data`` (as a 10-digit window of any run of
    digits: E.164, without the +, national with 0, or inside a longer run)."""
    hits: set[bytes] = set()
    for run in _DIGITS.findall(data):
        hits.update(w for i in range(len(run) - 9) if (w := run[i : i + 10]) in NSN)
    return hits


@pytest.fixture
def env(own_env: dict[str, str]) -> dict[str, str]:
    return own_env


@pytest.fixture
def carrier(tmp_path: Path) -> Iterator[tuple[str, dict[str, str], Path]]:
    port = pg.free_port()
    tokens = {
        "CONSENTGATE_SANDBOX_RBM_TOKEN": "rbm-" + uuid.uuid4().hex,
        "CONSENTGATE_SANDBOX_TWILIO_TOKEN": "twilio-" + uuid.uuid4().hex,
    }
    log = tmp_path / "sandbox.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "consentgate.sandbox", "--port", str(port)],
            env={**os.environ, **tokens},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/devices", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and process.poll() is None, log.read_text()
                time.sleep(0.05)
        yield url, tokens, log
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_no_number_of_a_10k_campaign_reaches_disk_or_logs(
    env: dict[str, str],
    tmp_path: Path,
    carrier: tuple[str, dict[str, str], Path],
    backend: str,
    own_pg: pg.Cluster | None,
) -> None:
    url, tokens, sandbox_log = carrier
    full = {
        **os.environ,
        **env,
        **tokens,
        "CONSENTGATE_SANDBOX_URL": url,
    }
    server: Server = _start(full, tmp_path / "server.log")
    # A second dispatcher beside the one in serve, in its own process (as in production).
    worker_log = tmp_path / "worker.log"
    with worker_log.open("wb") as out:
        worker = subprocess.Popen(
            [str(BIN), "worker", "--kind", "dispatch"],
            env=server.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        acme = server.create_tenant("acme")
        devices = [
            {"phone": p, "rcs": True, "native_e2ee": i % 2 == 0} for i, p in enumerate(PHONES)
        ]
        httpx.put(f"{url}/devices", json={"devices": devices}, timeout=60).raise_for_status()
        with server.client(acme["api_key"]) as http:
            http.timeout = httpx.Timeout(60)
            for start in range(0, N, 1000):
                events = [
                    {
                        "consent_id": f"scale-{start + i}",
                        "phone": p,
                        "consent_type": "marketing_rcs",
                        "status": "granted",
                        "timestamp": "2026-11-01T10:00:00Z",
                    }
                    for i, p in enumerate(PHONES[start : start + 1000])
                ]
                r = http.post("/v1/consent-events", json={"events": events})
                assert r.status_code == 201, r.text
            template = http.post(
                "/v1/templates", json={"name": "sale", "text": "Our sale starts now"}
            ).json()["template_id"]
            cid = http.post(
                "/v1/campaigns", json={"template_id": template, "consent_type": "marketing_rcs"}
            ).json()["campaign_id"]
            body = ("name,phone\n" + "".join(f"someone,{p}\n" for p in PHONES)).encode()
            upload = http.put(
                f"/v1/campaigns/{cid}/audience", content=body, headers={"content-type": "text/csv"}
            )
            assert upload.json()["accepted"] == N, upload.text
            t_send = time.monotonic()
            assert http.post(f"/v1/campaigns/{cid}/send").status_code == 200
            deadline = time.monotonic() + 120
            status: dict[str, object] = {}
            while time.monotonic() < deadline:
                status = http.get(f"/v1/campaigns/{cid}").json()
                if status["status"] == "done":
                    break
                time.sleep(0.2)
        # Even numbers: native E2EE; odd ones: RCS without a device key, a redacted fallback
        # with a secure link (no PII tokens in this template; the number never in a body).
        assert (status["status"], status["sent"], status["fallback"]) == ("done", N // 2, N // 2)
        print(f"send → done {time.monotonic() - t_send:.1f} s")
        carried = httpx.get(f"{url}/messages", timeout=60).content
        assert numbers_in(carried) == NSN  # the scanner sees every number where it is
        metrics = httpx.get(f"{server.url}/metrics", timeout=10).content
        t_verify = time.monotonic()
        verify = server.cli("ledger", "verify", check=False)
        print(f"ledger verify {time.monotonic() - t_verify:.1f} s")
        assert verify.returncode == 0, verify.stdout + verify.stderr
    finally:
        for process in (worker, server.process):
            process.terminate()
            process.wait(timeout=10)

    data_dir = Path(env["CONSENTGATE_DATA_DIR"])
    paths = [p for p in data_dir.rglob("*") if p.is_file()]
    assert any(p.name.endswith(".db") for p in paths) or backend == "pg"
    paths += [server.log, sandbox_log, worker_log]
    if own_pg is not None:  # the whole cluster is this test's: every file of it
        with psycopg.connect(own_pg.admin_dsn(), autocommit=True) as conn:
            conn.execute("CHECKPOINT")
        paths += [p for p in own_pg.datadir.rglob("*") if p.is_file()]
        paths.append(own_pg.base / "server.log")
    t_scan = time.monotonic()
    scanned = sum(p.stat().st_size for p in paths)
    assert scanned > 1_000_000  # the store really holds the campaign
    leaks = {str(p): len(found) for p in paths if (found := numbers_in(p.read_bytes()))}
    leaks.update({"metrics": len(numbers_in(metrics))} if numbers_in(metrics) else {})
    cli_out = (verify.stdout + verify.stderr).encode()
    leaks.update({"cli": len(numbers_in(cli_out))} if numbers_in(cli_out) else {})
    print(
        f"scanned {scanned / 1e6:.0f} MB of {len(paths)} files in {time.monotonic() - t_scan:.1f} s"
    )
    assert leaks == {}
