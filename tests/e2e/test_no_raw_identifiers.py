"""After an end-to-end run, no raw phone number or e-mail address is anywhere on disk, in the
logs or in GET /metrics — in any of the formats it was sent in, accepted or rejected; nor is a
hashed id or subject_ref in /metrics (labels are closed sets), and every log line is JSON."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import psycopg
import pytest
import sqlalchemy as sa

from tests import pg
from tests.e2e.conftest import Server

PHONES = ["07911 123456", "+44 7400 123456", "+447700123456", "(0)7911-222333", "+1 650 253 0000"]
REJECTED = ["+44 20 7946 09999 88", "+44 7911 12", "+999 123 456 789"]
EMAILS = ["Alice.Smith@Example.COM", "bob+rcs@example.org"]


def _needles() -> list[bytes]:
    """Every digit run of 7+ from each number, and each e-mail's local part and address."""
    needles: set[bytes] = set()
    for phone in PHONES + REJECTED:
        digits = re.sub(r"\D", "", phone)
        for size in (len(digits), len(digits) - 1, len(digits) - 2):
            if size >= 7:
                needles.add(digits[-size:].encode())
    for email in EMAILS:
        needles.update({email.lower().encode(), email.split("@")[0].lower().encode()})
    return sorted(needles)


def _scan(paths: list[Path]) -> list[str]:
    leaks = []
    needles = _needles()
    for path in paths:
        data = path.read_bytes().lower()
        for needle in needles:
            if needle in data:
                leaks.append(f"{path}: {needle.decode()}")
    return leaks


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def _scrape_metrics(server: Server) -> Path:
    """The /metrics body, saved beside the server log so the scan reads it too."""
    body = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert "consentgate_consent_events_total{" in body
    path = server.log.with_name("metrics.txt")
    path.write_text(body)
    return path


def _check_metrics_and_log(server: Server, metrics: Path) -> None:
    """No hashed id or subject_ref in /metrics; every server log line is a JSON object."""
    engine = sa.create_engine(server.env["CONSENTGATE_DATABASE_URL"])
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT hashed_id, subject_ref FROM subject_links")).all()
    finally:
        engine.dispose()
    ids = {value for row in rows for value in row}
    assert ids
    text = metrics.read_text()
    assert [i for i in ids if i in text] == []
    for line in server.log.read_text().splitlines():
        assert isinstance(json.loads(line), dict), line


@pytest.fixture
def env(own_env: dict[str, str]) -> dict[str, str]:
    """On PostgreSQL a cluster of the test's own: the scan reads all of it, WAL included, and
    a shared cluster's WAL holds every earlier test's writes too."""
    return own_env


def test_no_raw_identifier_reaches_disk_or_logs(server: Server, own_pg: pg.Cluster | None) -> None:
    acme = server.create_tenant("acme")
    with server.client(acme["api_key"]) as http:
        for i, phone in enumerate(PHONES):
            r = http.post(
                "/v1/consent-events",
                json={
                    "consent_id": f"p-{i}",
                    "phone": phone,
                    "consent_type": "marketing_rcs",
                    "status": "granted",
                    "timestamp": "2026-11-01T10:00:00Z",
                },
            )
            assert r.status_code == 201, r.text
            assert http.post("/v1/consents/lookup", json={"phone": phone}).status_code == 200
        for i, email in enumerate(EMAILS):
            r = http.post(
                "/v1/consent-events",
                json={
                    "consent_id": f"e-{i}",
                    "email": email,
                    "consent_type": "analytics",
                    "status": "granted",
                    "timestamp": "2026-11-01T10:00:00Z",
                },
            )
            assert r.status_code == 201, r.text
        # Messages through the sandbox carrier: numbers travel to the provider in memory only.
        sandbox = f"{server.url}/sandbox"
        httpx.put(
            f"{sandbox}/devices",
            json={
                "devices": [
                    {"phone": PHONES[0], "rcs": True, "native_e2ee": True},
                    {"phone": PHONES[1], "rcs": True, "native_e2ee": False},
                ]
            },
            timeout=10,
        )
        template = http.post(
            "/v1/templates", json={"name": "t", "text": "Hi {{name}}, news for you"}
        ).json()["template_id"]
        for i, phone in enumerate(PHONES):
            r = http.post(
                "/v1/messages",
                json={
                    "to": phone,
                    "consent_type": "marketing_rcs",
                    "template_id": template,
                    "variables": {"name": "Zebedee"},
                    "idempotency_key": f"m-{i}",
                },
            )
            assert r.status_code == 200, r.text
            assert r.json()["decision"]["action"] in ("sent", "fallback")
        assert len(httpx.get(f"{sandbox}/messages", timeout=10).json()["messages"]) == len(PHONES)
        for phone in REJECTED:
            r = http.post(
                "/v1/consent-events",
                json={
                    "consent_id": "bad",
                    "phone": phone,
                    "consent_type": "marketing_rcs",
                    "status": "granted",
                    "timestamp": "2026-11-01T10:00:00Z",
                },
            )
            assert r.status_code == 422
            assert not any(n.decode() in r.text for n in _needles())
            assert http.post("/v1/consents/lookup", json={"phone": phone}).status_code in (404, 422)
        # Conflicting replay and a wrong-type field: error paths must not echo either.
        r = http.post(
            "/v1/consent-events",
            json={
                "consent_id": "p-0",
                "phone": PHONES[0],
                "consent_type": "marketing_rcs",
                "status": "withdrawn",
                "timestamp": "2026-11-01T10:00:00Z",
            },
        )
        assert r.status_code == 409 and not any(n.decode() in r.text for n in _needles())
        r = http.post("/v1/consents/lookup", json={"phone": ["+447911123456"]})
        assert r.status_code == 422 and "7911123456" not in r.text
    verify = server.cli("ledger", "verify")
    metrics = _scrape_metrics(server)
    server.process.terminate()
    server.process.wait(timeout=10)

    data_dir = Path(server.env["CONSENTGATE_DATA_DIR"])
    paths = [*_files(data_dir), server.log, metrics]
    if own_pg is not None:  # every file of the test's own cluster
        with psycopg.connect(own_pg.admin_dsn(), autocommit=True) as conn:
            conn.execute("CHECKPOINT")
        paths += _files(own_pg.datadir)
        paths.append(own_pg.base / "server.log")
    else:
        assert any(p.name.endswith(".db") for p in paths)
    assert len(paths) > 3
    leaks = _scan(paths)
    cli_output = (verify.stdout + verify.stderr).lower().encode()
    leaks += [f"cli output: {n.decode()}" for n in _needles() if n in cli_output]
    assert leaks == []
    _check_metrics_and_log(server, metrics)
    assert httpx.__name__  # the client library was used over real sockets above
