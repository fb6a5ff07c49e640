"""The consent API as a client sees it: real server process, real HTTP, real crypto."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import httpx

from consentgate.ledger import merkle
from consentgate.ledger.checkpoint import verify_note
from tests.e2e.conftest import Server

PROBLEM = "application/problem+json"


def _event(consent_id: str, phone: str = "07911 123456", **extra: Any) -> dict[str, Any]:
    return {
        "consent_id": consent_id,
        "phone": phone,
        "consent_type": "marketing_rcs",
        "status": "granted",
        "timestamp": "2026-11-01T10:00:00Z",
        "cmp_version": "cmp-1.0",
        "source": "web",
        **extra,
    }


def _tree_size(http: httpx.Client) -> int:
    r = http.get("/v1/ledger/checkpoint")
    return int(r.text.split("\n")[1]) if r.status_code == 200 else 0


def test_ingest_replay_conflict_and_reads(server: Server) -> None:
    acme = server.create_tenant("acme", cli=True)  # the operator's command, end to end
    with server.client(acme["api_key"]) as http:
        first = http.post("/v1/consent-events", json=_event("c-1"))
        assert first.status_code == 201, first.text
        body = first.json()
        assert set(body) == {"event_id", "seq", "hashed_id", "leaf_hash"}
        replay = http.post("/v1/consent-events", json=_event("c-1", phone="+44 7911 123456"))
        assert replay.status_code == 200 and replay.json() == body
        clash = http.post("/v1/consent-events", json=_event("c-1", status="withdrawn"))
        assert clash.status_code == 409
        assert clash.headers["content-type"].startswith(PROBLEM)
        withdraw = http.post(
            "/v1/consent-events",
            json=_event(
                "c-2", phone="+447911123456", status="withdrawn", timestamp="2026-11-02T08:00:00Z"
            ),
        )
        assert withdraw.status_code == 201
        assert withdraw.json()["hashed_id"] == body["hashed_id"]

        state = http.get(f"/v1/subjects/{body['hashed_id']}/consents").json()
        assert state["consents"]["marketing_rcs"]["status"] == "withdrawn"
        assert state["consents"]["marketing_rcs"]["event_seq"] == 1
        looked_up = http.post("/v1/consents/lookup", json={"phone": "07911123456"}).json()
        assert looked_up == state
        history = http.get(f"/v1/subjects/{body['hashed_id']}/history").json()["events"]
        assert [e["consent_id"] for e in history] == ["c-1", "c-2"]
        assert all("phone" not in e and body["hashed_id"] not in str(e) for e in history)


def test_batch_is_all_or_nothing(server: Server) -> None:
    acme = server.create_tenant("acme")
    with server.client(acme["api_key"]) as http:
        good = [_event(f"b-{i}", phone=f"+44791112345{i}") for i in range(3)]
        bad = http.post("/v1/consent-events", json={"events": [*good, _event("b-x", phone="123")]})
        assert bad.status_code == 422
        assert bad.json()["field"] == "events[3].phone"
        assert "123" not in bad.text.replace("/", "")
        assert _tree_size(http) == 0
        ok = http.post("/v1/consent-events", json={"events": good})
        assert ok.status_code == 201
        assert [e["seq"] for e in ok.json()["events"]] == [0, 1, 2]


def test_proofs_verify_against_the_signed_checkpoint(server: Server) -> None:
    acme = server.create_tenant("acme")
    with server.client(acme["api_key"]) as http:
        for batch in range(3):
            events = [_event(f"p-{batch}-{i}", phone=f"+4479111{batch}{i:04d}") for i in range(5)]
            assert http.post("/v1/consent-events", json={"events": events}).status_code == 201
        key = http.get("/v1/ledger/key").text.strip()
        note = http.get("/v1/ledger/checkpoint").text
        checkpoint = verify_note(note, [key])
        assert checkpoint.size == 15
        for seq in (0, 7, 14):
            leaf = http.get(f"/v1/ledger/entries/{seq}")
            leaf_hash = hashlib.sha256(b"\x00" + leaf.content).digest()
            assert base64.b64decode(leaf.headers["leaf-hash"]) == leaf_hash
            proof = http.get("/v1/ledger/proof/inclusion", params={"seq": seq}).json()
            hashes = [base64.b64decode(h) for h in proof["hashes"]]
            merkle.verify_inclusion(leaf_hash, seq, checkpoint.size, hashes, checkpoint.root_hash)
        older = verify_note(
            http.get("/v1/ledger/proof/inclusion", params={"seq": 0, "tree_size": 5}).json()[
                "checkpoint"
            ],
            [key],
        )
        cons = http.get("/v1/ledger/proof/consistency", params={"first": 5, "second": 15}).json()
        merkle.verify_consistency(
            5,
            15,
            [base64.b64decode(h) for h in cons["hashes"]],
            older.root_hash,
            checkpoint.root_hash,
        )
        bad = http.get("/v1/ledger/proof/inclusion", params={"seq": 15})
        assert bad.status_code == 422 and bad.json()["field"] == "seq"
        jwks = httpx.get(f"{server.url}/v1/tenants/acme/jwks.json").json()
        assert jwks["keys"][0]["crv"] == "Ed25519"


def test_auth_scopes_and_tenant_walls(server: Server) -> None:
    acme = server.create_tenant("acme")
    beta = server.create_tenant("beta")
    auditor = server.cli("tenant", "add-key", "acme", "--scopes", "audit:read").stdout
    auditor_key = __import__("json").loads(auditor)["api_key"]
    with server.client(acme["api_key"]) as http:
        hashed = http.post("/v1/consent-events", json=_event("t-1")).json()["hashed_id"]
    with server.client() as anon:
        r = anon.get(f"/v1/subjects/{hashed}/consents")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert (
            anon.get(
                f"/v1/subjects/{hashed}/consents", headers={"Authorization": "Bearer x"}
            ).status_code
            == 401
        )
    with server.client(beta["api_key"]) as http:
        assert http.get(f"/v1/subjects/{hashed}/consents").status_code == 404
        assert http.get(f"/v1/subjects/{hashed}/history").status_code == 404
        assert http.post("/v1/consents/lookup", json={"phone": "07911 123456"}).status_code == 404
        assert http.get("/v1/ledger/entries/0").status_code == 404
    with server.client(auditor_key) as http:
        assert http.get(f"/v1/subjects/{hashed}/history").status_code == 200
        denied = http.post("/v1/consent-events", json=_event("t-2"))
        assert denied.status_code == 403 and denied.headers["content-type"].startswith(PROBLEM)


def test_bad_input_is_a_clear_problem_and_writes_nothing(server: Server) -> None:
    acme = server.create_tenant("acme")
    with server.client(acme["api_key"]) as http:
        assert http.post("/v1/consent-events", json=_event("ok")).status_code == 201
        cases = [
            (b"{not json", 400, None),
            (b"\xff\xfe\x00garbage", 400, None),
            (b"[1, 2, 3]", 422, None),
            (b'{"events": []}', 422, "events"),
            (b"[" * 5000 + b"]" * 5000, 400, None),
        ]
        for raw, status, field in cases:
            r = http.post(
                "/v1/consent-events", content=raw, headers={"content-type": "application/json"}
            )
            assert r.status_code == status, (raw[:20], r.text)
            assert r.headers["content-type"].startswith(PROBLEM)
            problem = r.json()
            assert {"type", "title", "status", "detail"} <= set(problem)
            if field:
                assert problem["field"] == field
        for event, field in [
            (_event("x", status="maybe"), "status"),
            (_event("x", timestamp="yesterday"), "timestamp"),
            (_event("x", timestamp="2099-01-01T00:00:00Z"), "timestamp"),
            (_event("x", consent_type="nope"), "consent_type"),
            (_event("x", phone="+44 12"), "phone"),
            (_event("x", source="fax"), "source"),
            ({**_event("x"), "surprise": 1}, "surprise"),
            ({**_event("x"), "hashed_id": "ab" * 32}, "phone"),
        ]:
            r = http.post("/v1/consent-events", json=event)
            assert r.status_code == 422, (field, r.text)
            assert r.json()["field"] == field
        huge = http.post(
            "/v1/consent-events",
            content=b'{"events": [' + b" " * (5 * 1024 * 1024) + b"]}",
            headers={"content-type": "application/json"},
        )
        assert huge.status_code == 413
        assert _tree_size(http) == 1
        assert http.get("/openapi.json").status_code == 200
        assert http.get("/docs").status_code == 200
        assert httpx.get(f"{server.url}/readyz").json()["store"] == "ok"
