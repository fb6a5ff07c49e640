"""GET /metrics and the JSON logs of a real ``consentgate serve`` over loopback (SQLite and
PostgreSQL): counters move by exactly what was done, every label value is from a closed set,
every log line is a JSON object, and the access log names route templates, never paths;
an optional bearer token guards /metrics."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from consentgate.observability import metrics as m
from tests import pg
from tests.e2e.conftest import BIN, Server, _start

NATIVE, FALLBACK, GONE, STRANGER = (
    "+447911100001",
    "+447911100002",
    "+447911100003",
    "+447911200009",
)
PURPOSES = {"marketing_rcs", "transactional_rcs", "analytics", "personalization"}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(server: Server, **headers: str) -> tuple[str, Samples]:
    r = httpx.get(f"{server.url}/metrics", headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }
    return r.text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def routes(server: Server) -> set[str]:
    """Every route template the app serves (its OpenAPI paths), the sandbox carrier's under
    /sandbox, and the unmatched marker."""
    paths = set(httpx.get(f"{server.url}/openapi.json", timeout=10).json()["paths"])
    sandbox = httpx.get(f"{server.url}/sandbox/openapi.json", timeout=10).json()["paths"]
    # agentMessages.create is answered by the sandbox's lean front (sandbox/fastpath.py),
    # which labels it with the same template as the FastAPI route behind it.
    lean = {"/sandbox/rbm/v1/phones/{phone}/agentMessages"}
    return paths | {f"/sandbox{p}" for p in sandbox} | lean | {"<unmatched>"}


def closed_sets(server: Server, tenants: set[str]) -> dict[str, Callable[[str], bool]]:
    """What each label may hold. A label not listed here fails the test: a new label must
    say which closed set its values come from."""

    def among(allowed: set[str] | frozenset[str]) -> Callable[[str], bool]:
        return lambda v: v in allowed

    return {
        "tenant": among(tenants),
        "consent_type": among(PURPOSES | {m.OTHER}),
        "status": lambda v: (
            v in m.STATUSES | {"pending", "dead"} or re.fullmatch(r"[1-5][0-9]{2}", v) is not None
        ),
        "source": among(m.SOURCES),
        "stage": among(m.GATE_STAGES),
        "result": among(m.GATE_RESULTS | m.CACHE_RESULTS),
        "reason": among(m.REASONS),
        "action": among(m.ACTIONS),
        "mode": among(m.MODES),
        "outcome": among(m.CAMPAIGN_OUTCOMES | m.RECEIPT_OUTCOMES | m.WEBHOOK_OUTCOMES),
        "provider": among(m.PROVIDERS),
        "kind": among(m.RECEIPT_KINDS | m.WEBHOOK_KINDS),
        "event_type": among(m.WEBHOOK_EVENT_TYPES),
        "method": among(m.METHODS),
        "route": among(routes(server)),
        "state": lambda v: re.fullmatch(r"[a-z_]+", v) is not None,
        "version": lambda v: re.fullmatch(r"\d+\.\d+\.\d+", v) is not None,
        "le": lambda v: v == "+Inf" or re.fullmatch(r"\d+(\.\d+)?(e[+-]?\d+)?", v) is not None,
    }


def assert_labels_closed(samples: Samples, allowed: dict[str, Callable[[str], bool]]) -> None:
    bad = [
        (name, key, v)
        for name, labels in samples
        for key, v in labels
        if key not in allowed or not allowed[key](v)
    ]
    assert bad == []


def _grant(http: httpx.Client, phone: str, n: int, status: str = "granted", **kw: str) -> None:
    r = http.post(
        "/v1/consent-events",
        json={
            "consent_id": f"cmp-{n}",
            "phone": phone,
            "consent_type": "marketing_rcs",
            "status": status,
            "timestamp": f"2026-11-{1 + n:02d}T10:00:00Z",
            **kw,
        },
    )
    assert r.status_code in (200, 201), r.text


def _send(http: httpx.Client, to: str, template: str, key: str) -> dict[str, Any]:
    r = http.post(
        "/v1/messages",
        json={
            "to": to,
            "consent_type": "marketing_rcs",
            "template_id": template,
            "variables": {},
            "idempotency_key": key,
        },
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_counters_move_and_labels_stay_closed(server: Server) -> None:
    acme = server.create_tenant("acme")
    _, before = scrape(server)
    assert value(before, "consentgate_store_up") == 1
    assert value(before, "consentgate_campaign_queue_depth", state="queued") == 0
    sandbox = httpx.Client(base_url=f"{server.url}/sandbox", timeout=10)
    sandbox.put(
        "/devices", json={"devices": [{"phone": NATIVE, "rcs": True, "native_e2ee": True}]}
    ).raise_for_status()
    with server.client(acme["api_key"]) as http:
        _grant(http, NATIVE, 0, source="web")
        _grant(http, FALLBACK, 1, source="web")
        _grant(http, GONE, 2, source="web")
        _grant(http, GONE, 3, status="withdrawn", source="api")
        _grant(http, NATIVE, 0, source="web")  # an identical replay: 200, not a new event
        template = http.post("/v1/templates", json={"name": "t", "text": "News"}).json()[
            "template_id"
        ]
        sent = _send(http, NATIVE, template, "k1")
        assert sent["decision"]["mode"] == "native_e2ee"
        assert _send(http, FALLBACK, template, "k2")["decision"]["action"] == "fallback"
        assert _send(http, GONE, template, "k3")["decision"]["reason"] == "withdrawn"
        assert _send(http, STRANGER, template, "k4")["decision"]["reason"] == "no_consent"
        assert _send(http, NATIVE, template, "k1") == sent  # idempotent: not counted again
        flushed = sandbox.post("/deliveries/flush", params={"read": "true"}).json()
        assert flushed["callbacks_failed"] == 0
        stop = sandbox.post("/inbound", json={"from": NATIVE, "text": "STOP"})
        assert stop.json() == {"callback_status": 200}
        assert http.get(f"/v1/messages/{sent['message_id']}").status_code == 200
        hashed = http.post("/v1/consents/lookup", json={"phone": NATIVE}).json()["hashed_id"]
        r = http.get(f"/v1/subjects/{hashed}/consents", headers={"X-Request-ID": "trace-0001"})
        assert r.status_code == 200 and r.headers["x-request-id"] == "trace-0001"
        generated = http.get("/healthz").headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert httpx.get(f"{server.url}/no/such/+447911100001").status_code == 404

    text, after = scrape(server)
    consent = {"tenant": "acme", "consent_type": "marketing_rcs"}
    events = "consentgate_consent_events_total"
    assert value(after, events, **consent, status="granted", source="web") == 3
    assert value(after, events, **consent, status="withdrawn", source="api") == 1
    assert value(after, events, **consent, status="withdrawn", source="inbound_keyword") == 1
    assert value(after, "consentgate_consent_replays_total", tenant="acme") == 1

    gate = {"tenant": "acme", "stage": "check"}
    decisions = "consentgate_gate_decisions_total"
    # Two sends allowed; the RBM one is checked a second time once stored (the sender's
    # second look, which would mark it for revocation had a withdrawal raced it).
    assert value(after, decisions, **gate, result="allowed", reason="none") == 3
    assert value(after, decisions, **gate, result="denied", reason="withdrawn") == 1
    assert value(after, decisions, **gate, result="denied", reason="no_consent") == 1
    assert (
        value(after, "consentgate_gate_cache_lookups_total", result="hit")
        + value(after, "consentgate_gate_cache_lookups_total", result="miss")
        == 3
    )

    sends = "consentgate_send_decisions_total"
    acme_ = {"tenant": "acme"}
    assert value(after, sends, **acme_, action="sent", mode="native_e2ee", reason="none") == 1
    fallback = {"mode": "sms_redacted", "reason": "no_device_key"}
    assert value(after, sends, **acme_, action="fallback", **fallback) == 1
    assert value(after, sends, **acme_, action="skipped", mode="none", reason="withdrawn") == 1
    assert value(after, sends, **acme_, action="skipped", mode="none", reason="no_consent") == 1
    assert value(after, "consentgate_fallbacks_total", **acme_, **fallback) == 1

    linked = sum(
        v
        for (name, labels), v in after.items()
        if name == "consentgate_delivery_receipts_total" and ("outcome", "linked") in labels
    )
    assert linked == flushed["callbacks_sent"] > 0

    http_requests = "consentgate_http_requests_total"
    post_events = {"method": "POST", "route": "/v1/consent-events"}
    assert value(after, http_requests, **post_events, status="201") == 4
    assert value(after, http_requests, **post_events, status="200") == 1
    read = {"method": "GET", "route": "/v1/messages/{message_id}", "status": "200"}
    assert value(after, http_requests, **read) == 1
    assert value(after, http_requests, method="GET", route="<unmatched>", status="404") == 1
    assert value(after, "consentgate_http_request_duration_seconds_count", **post_events) == 5
    assert value(after, http_requests, method="GET", route="/metrics", status="200") == 1

    assert_labels_closed(after, closed_sets(server, {"acme"}))
    assert sent["message_id"] not in text and "7911" not in text
    assert acme["api_key"] not in text and hashed not in text
    check_json_log(server.log, hashed, generated)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # no storage involved
def test_metrics_token(env: dict[str, str], tmp_path: Path) -> None:
    token = {"CONSENTGATE_METRICS_TOKEN": "s3cret-token"}
    secured = _start({**os.environ, **env, **token}, tmp_path / "server.log")
    try:
        assert httpx.get(f"{secured.url}/metrics", timeout=10).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert httpx.get(f"{secured.url}/metrics", headers=wrong, timeout=10).status_code == 401
        _, samples = scrape(secured, Authorization="Bearer s3cret-token")
        assert value(samples, "consentgate_store_up") == 1
    finally:
        secured.process.terminate()
        secured.process.wait(timeout=10)
    assert "s3cret-token" not in (tmp_path / "server.log").read_text()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_worker_serves_its_own_metrics(env: dict[str, str], tmp_path: Path) -> None:
    port = pg.free_port()
    log = tmp_path / "worker.log"
    full = {**os.environ, **env, "CONSENTGATE_METRICS_TOKEN": "w0rker-token"}
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [str(BIN), "worker", "--kind", "relay", "--metrics-port", str(port)],
            env=full,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        deadline = time.monotonic() + 60
        while True:
            assert worker.poll() is None, log.read_text()
            try:
                refused = httpx.get(url, timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        assert refused.status_code == 401
        r = httpx.get(url, headers={"Authorization": "Bearer w0rker-token"}, timeout=10)
        assert r.status_code == 200
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text)
            for s in family.samples
        }
        assert value(samples, "consentgate_store_up") == 1
        assert value(samples, "consentgate_campaign_queue_depth", state="queued") == 0
    finally:
        worker.terminate()
        assert worker.wait(timeout=30) == 0
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    running = [e for e in entries if e["logger"] == "consentgate.worker"]
    assert running[0]["metrics_port"] == port and running[-1]["message"].endswith("stopping")


def check_json_log(log: Path, hashed: str, generated: str) -> None:
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= set(entry), entry
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])
    access = [e for e in entries if e["logger"] == "consentgate.access"]
    traced = [e for e in access if e.get("request_id") == "trace-0001"]
    assert len(traced) == 1
    assert traced[0]["route"] == "/v1/subjects/{hashed_id}/consents"
    assert traced[0]["method"] == "GET" and traced[0]["status"] == 200
    assert isinstance(traced[0]["duration_ms"], float)
    assert any(e.get("request_id") == generated for e in access)
    assert {e["route"] for e in access} >= {
        "/v1/messages/{message_id}",
        # (agentMessages.create is answered by the sandbox's lean front, before this log)
        "/sandbox/rbm/v1/phones/{phone}/capabilities",
        "<unmatched>",
    }
    assert any(e["logger"] == "consentgate.serve" and e.get("port") for e in entries)
    assert any(e["logger"] == "uvicorn.error" for e in entries)  # uvicorn's own lines too
    raw = log.read_text()
    assert hashed not in raw and "7911" not in raw
