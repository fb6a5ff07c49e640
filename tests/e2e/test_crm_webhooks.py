"""CRM/CMP webhooks over real HTTP: the endpoint and delivery API (validation problems,
scopes, tenant walls), the relay running inside ``consentgate serve`` and alone as
``consentgate worker --kind relay``, signatures checked with ``standardwebhooks``, and no raw
identifier in any webhook request."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from consentgate.bootstrap import build
from consentgate.config import load_settings
from consentgate.consent.ingest import EventInput
from consentgate.domain.timeutil import format_rfc3339
from tests.e2e.conftest import BIN, Server
from tests.webhook_receiver import Received, Receiver

ALICE, BOB = "+447911100011", "+447911100012"
FAST = {"CONSENTGATE_WEBHOOK_POLL_SECONDS": "0.05", "CONSENTGATE_WEBHOOK_TIMEOUT_SECONDS": "2"}
ALL_TYPES = [
    "consent.changed",
    "message.decided",
    "message.delivered",
    "message.read",
    "message.failed",
]


@pytest.fixture
def env(env: dict[str, str]) -> dict[str, str]:
    return {**env, **FAST}


def _wait(what: str, done: Callable[[], bool], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _grant(http: httpx.Client, phone: str, consent_id: str) -> str:
    r = http.post(
        "/v1/consent-events",
        json={
            "consent_id": consent_id,
            "phone": phone,
            "consent_type": "marketing_rcs",
            "status": "granted",
            "timestamp": format_rfc3339(datetime.now(UTC) - timedelta(hours=1)),
            "source": "web",
        },
    )
    assert r.status_code == 201, r.text
    return str(r.json()["hashed_id"])


def _problem(r: httpx.Response, status: int, field: str | None = None) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    if field is not None:
        assert r.json()["field"] == field


def test_endpoint_and_delivery_api_validation_scopes_and_tenant_walls(server: Server) -> None:
    acme = server.create_tenant("acme")
    other = server.create_tenant("other")
    writer = json.loads(
        server.cli("tenant", "add-key", "acme", "--scopes", "consent:write").stdout
    )["api_key"]
    with (
        server.client(acme["api_key"]) as http,
        server.client(other["api_key"]) as them,
        server.client(writer) as no_admin,
    ):
        post = "/v1/crm/endpoints"
        good = {"url": "https://crm.example/hooks", "event_types": ["consent.changed"]}
        _problem(http.post(post, json={**good, "url": "ftp://crm.example/x"}), 422, "url")
        _problem(http.post(post, json={**good, "url": "https://u:p@crm.example/"}), 422, "url")
        _problem(http.post(post, json={**good, "event_types": []}), 422, "event_types")
        _problem(
            http.post(post, json={**good, "event_types": ["consent.changed", "everything"]}),
            422,
            "event_types[1]",
        )
        _problem(http.post(post, json={**good, "kind": "erp"}), 422, "kind")
        _problem(http.post(post, json={**good, "extra": 1}), 422, "extra")
        _problem(http.post(post, content=b"{not json"), 400)
        _problem(no_admin.post(post, json=good), 403)
        _problem(no_admin.get("/v1/crm/deliveries"), 403)
        assert http.get("/v1/crm/endpoints").json() == {"endpoints": []}  # nothing was created

        created = http.post(post, json={**good, "kind": "cmp"})
        assert created.status_code == 201, created.text
        endpoint = created.json()
        assert endpoint["secret"].startswith("whsec_")
        assert endpoint["kind"] == "cmp" and endpoint["active"] is True
        listed = http.get("/v1/crm/endpoints").json()["endpoints"]
        assert [e["endpoint_id"] for e in listed] == [endpoint["endpoint_id"]]
        assert "secret" not in listed[0]

        _grant(http, ALICE, "cmp-1")
        deliveries = http.get("/v1/crm/deliveries").json()["deliveries"]
        assert deliveries == []  # a cmp endpoint is not sent the CMP's own event back
        crm = http.post(post, json=good).json()
        _grant(http, BOB, "cmp-2")
        page = http.get("/v1/crm/deliveries", params={"status": "pending", "limit": 1}).json()
        assert len(page["deliveries"]) == 1
        delivery = page["deliveries"][0]
        assert delivery["endpoint_id"] == crm["endpoint_id"]
        assert delivery["event"]["data"]["consent_id"] == "cmp-2"
        _problem(http.get("/v1/crm/deliveries", params={"status": "lost"}), 422, "status")
        _problem(http.get("/v1/crm/deliveries", params={"limit": 0}), 422, "limit")
        _problem(http.get("/v1/crm/deliveries", params={"limit": "x"}), 422, "limit")
        _problem(http.get("/v1/crm/deliveries", params={"cursor": "abc"}), 422, "cursor")

        # Another tenant sees nothing and can touch nothing.
        ident = delivery["delivery_id"]
        assert them.get("/v1/crm/endpoints").json() == {"endpoints": []}
        assert them.get("/v1/crm/deliveries").json()["deliveries"] == []
        _problem(them.get(f"/v1/crm/deliveries/{ident}"), 404)
        _problem(them.post(f"/v1/crm/deliveries/{ident}/replay"), 404)
        _problem(them.delete(f"/v1/crm/endpoints/{crm['endpoint_id']}"), 404)
        _problem(http.post("/v1/crm/deliveries/not-a-number/replay"), 404)

        assert http.delete(f"/v1/crm/endpoints/{crm['endpoint_id']}").status_code == 204
        assert http.delete(f"/v1/crm/endpoints/{crm['endpoint_id']}").status_code == 204
        gone = http.get(f"/v1/crm/deliveries/{ident}").json()
        assert (gone["status"], gone["last_error"]) == ("dead", "endpoint disabled")
        _problem(http.post(f"/v1/crm/deliveries/{ident}/replay"), 409)


def _phone_forms(phone: str) -> list[str]:
    digits = phone.lstrip("+")
    return [phone, digits, "0" + digits[2:], digits[2:]]


def _assert_no_raw_identifiers(requests: list[Received], phones: list[str]) -> None:
    for r in requests:
        text = r.body.decode() + json.dumps(r.headers)
        for phone in phones:
            for form in _phone_forms(phone):
                assert form not in text, "a raw phone number left in a webhook"


def test_serve_relays_consent_sends_receipts_and_stop_without_raw_identifiers(
    server: Server,
) -> None:
    acme = server.create_tenant("acme")
    sandbox = httpx.Client(base_url=f"{server.url}/sandbox", timeout=10)
    sandbox.put(
        "/devices", json={"devices": [{"phone": ALICE, "rcs": True, "native_e2ee": True}]}
    ).raise_for_status()
    with Receiver().running() as rx, server.client(acme["api_key"]) as http:
        crm = http.post(
            "/v1/crm/endpoints", json={"url": rx.url + "/crm", "event_types": ALL_TYPES}
        ).json()
        cmp = http.post(
            "/v1/crm/endpoints",
            json={"url": rx.url + "/cmp", "event_types": ["consent.changed"], "kind": "cmp"},
        ).json()
        hashed = _grant(http, ALICE, "web-consent-1")
        template = http.post("/v1/templates", json={"name": "promo", "text": "Hi {{name}}"})
        sent = http.post(
            "/v1/messages",
            json={
                "to": ALICE,
                "consent_type": "marketing_rcs",
                "template_id": template.json()["template_id"],
                "variables": {"name": "Ada"},
                "idempotency_key": "promo-1",
            },
        ).json()
        assert sent["decision"]["action"] == "sent"
        assert sandbox.post("/deliveries/flush", params={"read": "true"}).status_code == 200
        assert sandbox.post("/inbound", json={"from": ALICE, "text": "STOP"}).status_code == 200

        def types_for(endpoint: dict[str, Any]) -> list[str]:
            mine = [r for r in rx.snapshot() if r.webhook_id.endswith(endpoint["endpoint_id"])]
            return [json.loads(r.body)["type"] for r in mine]

        expected = [
            "consent.changed",
            "message.decided",
            "message.delivered",
            "message.read",
            "consent.changed",
        ]
        _wait("the CRM's five events", lambda: types_for(crm) == expected)
        _wait("the CMP's withdrawal", lambda: types_for(cmp) == ["consent.changed"])
        assert http.get("/v1/crm/deliveries", params={"status": "pending"}).json() == {
            "deliveries": [],
            "next_cursor": None,
        }
    requests = rx.snapshot()
    by_type: dict[str, dict[str, Any]] = {}
    for r in requests:
        secret = crm["secret"] if r.webhook_id.endswith(crm["endpoint_id"]) else cmp["secret"]
        body = Webhook(secret).verify(r.body, r.headers)
        by_type.setdefault(body["type"], body)  # the first of each type (the CRM's, in order)
    decided = by_type["message.decided"]["data"]
    assert decided == {
        "message_id": sent["message_id"],
        "hashed_id": hashed,
        "consent_type": "marketing_rcs",
        "action": "sent",
        "mode": sent["decision"]["mode"],
        "reason": None,
        "consent_seq": sent["consent_seq"],
        "campaign_id": None,
    }
    assert by_type["message.read"]["data"]["message_id"] == sent["message_id"]
    cmp_body = json.loads(
        next(r.body for r in requests if r.webhook_id.endswith(cmp["endpoint_id"]))
    )
    assert cmp_body["data"]["status"] == "withdrawn"
    assert cmp_body["data"]["source"] == "inbound_keyword"
    assert cmp_body["data"]["hashed_id"] == hashed
    _assert_no_raw_identifiers(requests, [ALICE])
    log = server.log.read_text()
    assert all(form not in log for form in _phone_forms(ALICE))


def test_worker_command_relays_alone_and_stops_on_sigterm(
    env: dict[str, str], tmp_path: Path
) -> None:
    core = build(load_settings(env))
    try:
        core.tenants.create("acme", "GB")
        with Receiver().running() as rx:
            endpoint = core.endpoints.create("acme", rx.url, ["consent.changed"])
            core.ingest.ingest(
                "acme",
                None,
                [
                    EventInput(
                        consent_id="w-1",
                        consent_type="marketing_rcs",
                        status="granted",
                        timestamp=format_rfc3339(datetime.now(UTC) - timedelta(minutes=5)),
                        phone=BOB,
                    )
                ],
                batch=False,
            )
            log = tmp_path / "worker.log"
            with open(log, "wb") as out:
                worker = subprocess.Popen(
                    [str(BIN), "worker", "--kind", "relay"],
                    env={**os.environ, **env},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            try:
                _wait("the worker's delivery", lambda: len(rx.snapshot()) == 1, seconds=30)
                worker.send_signal(signal.SIGTERM)
                assert worker.wait(timeout=20) == 0, log.read_text()
            finally:
                if worker.poll() is None:
                    worker.kill()
        received = rx.snapshot()[0]
        body = Webhook(endpoint["secret"]).verify(received.body, received.headers)
        assert body["data"]["consent_id"] == "w-1"
        assert core.deliveries.list("acme", status="delivered")["deliveries"][0]["attempts"] == 1
        assert "relay" in log.read_text()
    finally:
        core.close()
