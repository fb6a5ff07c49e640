"""Erasure and retention over real HTTP and the real CLI, against the sandbox carrier."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

from consentgate.device import DeviceKeys, register
from tests.e2e.conftest import Server
from tests.integration.privacy_scan import files_containing, rows_containing

PHONE, OTHER = "+447911100031", "+447911100032"


def _grant(http: httpx.Client, phone: str, cid: str) -> str:
    r = http.post(
        "/v1/consent-events",
        json={
            "consent_id": cid,
            "phone": phone,
            "consent_type": "marketing_rcs",
            "status": "granted",
            "timestamp": "2026-11-01T10:00:00Z",
        },
    )
    assert r.status_code == 201, r.text
    hashed: str = r.json()["hashed_id"]
    return hashed


def _send(http: httpx.Client, to: str, template: str, key: str) -> dict[str, Any]:
    r = http.post(
        "/v1/messages",
        json={
            "to": to,
            "consent_type": "marketing_rcs",
            "template_id": template,
            "idempotency_key": key,
        },
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_erasure_and_retention_over_http(server: Server) -> None:
    acme = server.create_tenant("acme")
    beta = server.create_tenant("beta")
    reader = json.loads(server.cli("tenant", "add-key", "acme", "--scopes", "consent:read").stdout)
    httpx.put(
        f"{server.url}/sandbox/devices",
        json={"devices": [{"phone": p, "rcs": True, "native_e2ee": False} for p in (PHONE, OTHER)]},
    ).raise_for_status()
    with server.client(acme["api_key"]) as http, server.client(reader["api_key"]) as ro:
        hashed = _grant(http, PHONE, "e2e-1")
        kept = _grant(http, OTHER, "e2e-2")
        register(
            server.url,
            acme["api_key"],
            keys=DeviceKeys.generate(),
            rcs=True,
            native_e2ee=False,
            phone=PHONE,
        )
        template = http.post("/v1/templates", json={"name": "t", "text": "Hello"}).json()
        sent = _send(http, PHONE, template["template_id"], "order-1")
        assert sent["decision"]["action"] == "sent" and sent["consent_seq"] is not None

        # Retention settings: admin only, validated, defaults documented in the answer.
        assert ro.get("/v1/retention").status_code == 403
        got = http.get("/v1/retention").json()
        assert got["outbox_days"] == 30 and got["defaults"]["send_decisions_days"] == 400
        bad = http.put("/v1/retention", json={"delivery_events_days": 500})
        assert bad.status_code == 422 and bad.json()["field"] == "delivery_events_days"
        assert http.put("/v1/retention", json={"outbox_days": 0}).status_code == 422
        assert http.put("/v1/retention", json={"nope": 1}).status_code == 422
        assert http.get("/v1/retention").json() == got  # nothing changed
        put = http.put("/v1/retention", json={"delivery_events_days": 90, "outbox_days": 7})
        assert put.status_code == 200 and put.json()["delivery_events_days"] == 90

        # Erasure: admin only; another tenant's key cannot reach the subject.
        assert ro.post(f"/v1/subjects/{hashed}/erase").status_code == 403
        with server.client(beta["api_key"]) as other_tenant:
            assert other_tenant.post(f"/v1/subjects/{hashed}/erase").status_code == 404
        erased = http.post(f"/v1/subjects/{hashed}/erase")
        assert erased.status_code == 200, erased.text
        report = erased.json()
        assert report["erased"] is True and report["counts"]["subject_links"] == 1
        assert report["counts"]["messages"] == 1 and report["counts"]["devices"] == 1
        again = http.post(f"/v1/subjects/{hashed}/erase")
        assert again.status_code == 404
        assert again.headers["content-type"].startswith("application/problem+json")

        for path in ("consents", "history", "receipt?consent_type=marketing_rcs"):
            assert http.get(f"/v1/subjects/{hashed}/{path}").status_code == 404
        assert http.post("/v1/consents/lookup", json={"phone": PHONE}).status_code == 404
        assert http.post("/v1/consents/lookup", json={"phone": OTHER}).status_code == 200
        message = http.get(f"/v1/messages/{sent['message_id']}").json()
        assert message["decision"]["action"] == "sent"  # the decision stays, unlinked

    verified = server.cli("ledger", "verify", "--tenant", "acme")
    assert json.loads(verified.stdout)[0]["ok"] is True
    run = json.loads(server.cli("retention", "run", "--tenant", "acme").stdout)
    assert run["tenants"]["acme"]["policy"]["outbox_days"] == 7
    assert "ledger_entries" not in run["tenants"]["acme"]["deleted"]

    url = server.env["CONSENTGATE_DATABASE_URL"]
    engine = create_engine(url)
    try:
        assert rows_containing(engine, [hashed]) == {}
        assert rows_containing(engine, [kept])  # the bystander is still there
        with engine.connect() as conn:
            erased_leaf = conn.execute(
                text("SELECT status FROM ledger_entries WHERE seq = :s AND tenant_id = 'acme'"),
                {"s": report["ledger_seq"]},
            ).scalar_one()
        assert erased_leaf == "erased"
    finally:
        engine.dispose()
    if url.startswith("sqlite"):
        db = Path(url.removeprefix("sqlite:///"))
        assert files_containing([db, db.with_name(db.name + "-wal")], [hashed]) == []

    # Sends to the number are skipped until a new consent makes a new subject. (This send
    # is new activity: its own records name the number's hashed id again.)
    with server.client(acme["api_key"]) as http:
        later = _send(http, PHONE, template["template_id"], "order-2")
        assert later["decision"] == {"action": "skipped", "mode": None, "reason": "no_consent"}
        assert _grant(http, PHONE, "e2e-3") == hashed
        assert [
            e["consent_id"] for e in http.get(f"/v1/subjects/{hashed}/history").json()["events"]
        ] == ["e2e-3"]
