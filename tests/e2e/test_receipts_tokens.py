"""Receipts and consent tokens, checked by an independent JOSE library (jwcrypto) and by
the offline verifier; CMP-signed receipts made with jwcrypto and verified on ingest."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from jwcrypto import jwk, jws, jwt

from consentgate.consent.receipt_check import ReceiptInvalid, check_bundle
from tests.e2e.conftest import BIN, Server

EVENT = {
    "consent_id": "r-1",
    "phone": "07911 123456",
    "consent_type": "marketing_rcs",
    "status": "granted",
    "timestamp": "2026-11-01T10:00:00Z",
    "cmp_version": "cmp-7.1",
    "policy_version": "privacy-2026-10",
    "jurisdiction": "GB",
    "source": "android",
    "device": {"rcs": True, "native_e2ee": False, "app_key_kid": "dev-key-1"},
}


def _setup(server: Server) -> tuple[dict[str, Any], str]:
    acme = server.create_tenant("acme")
    with server.client(acme["api_key"]) as http:
        r = http.post("/v1/consent-events", json=EVENT)
        assert r.status_code == 201, r.text
    return acme, r.json()["hashed_id"]


def _jwks(server: Server) -> dict[str, Any]:
    data: dict[str, Any] = httpx.get(f"{server.url}/v1/tenants/acme/jwks.json").json()
    return data


def test_receipt_verifies_with_jwcrypto_and_offline(server: Server, tmp_path: Path) -> None:
    acme, hashed = _setup(server)
    with server.client(acme["api_key"]) as http:
        bundle = http.get(
            f"/v1/subjects/{hashed}/receipt", params={"consent_type": "marketing_rcs"}
        ).json()
        keys = http.get("/v1/ledger/key", params={"all": "true"}).text
        assert (
            http.get(
                f"/v1/subjects/{hashed}/receipt", params={"consent_type": "analytics"}
            ).status_code
            == 404
        )
    key_set = jwk.JWKSet.from_json(json.dumps(_jwks(server)))
    token = jws.JWS()
    token.deserialize(bundle["receipt"])
    kid = json.loads(token.objects["protected"])["kid"]
    token.verify(key_set.get_key(kid), alg="EdDSA")
    claims = json.loads(token.payload)
    for name in (
        "jti",
        "iss",
        "iat",
        "sub",
        "consent_type",
        "status",
        "consent_timestamp",
        "ledger_seq",
        "leaf_hash",
        "cmp_version",
        "policy_version",
        "collection_method",
        "jurisdiction",
        "controller",
        "version",
        "consentReceiptID",
        "piiPrincipalId",
        "services",
    ):
        assert name in claims, name
    assert claims["sub"] == hashed
    assert claims["collection_method"] == "android"
    leaf = json.loads(bundle["leaf"])
    assert leaf["device"] == EVENT["device"]
    assert "phone" not in bundle["leaf"] and hashed not in bundle["leaf"]

    (tmp_path / "r.json").write_text(json.dumps(bundle))
    (tmp_path / "jwks.json").write_text(json.dumps(_jwks(server)))
    (tmp_path / "key.txt").write_text(keys)
    run = [
        str(BIN),
        "receipt",
        "verify",
        str(tmp_path / "r.json"),
        "--jwks",
        str(tmp_path / "jwks.json"),
        "--key",
        str(tmp_path / "key.txt"),
    ]
    ok = subprocess.run(run, capture_output=True, text=True, env={}, timeout=60)
    assert ok.returncode == 0, ok.stderr
    (tmp_path / "r.json").write_text(
        json.dumps({**bundle, "leaf": bundle["leaf"].replace("android", "ios")})
    )
    bad = subprocess.run(run, capture_output=True, text=True, env={}, timeout=60)
    assert bad.returncode == 1 and "INVALID" in bad.stderr

    # Any changed byte of the receipt, leaf, proof or checkpoint breaks verification.
    jwks_doc, verifiers = _jwks(server), keys.split()
    check_bundle(bundle, jwks_doc, verifiers)
    for part in ("receipt", "leaf", "checkpoint"):
        text = bundle[part]
        for i in range(len(text)):
            replacement = "A" if text[i] != "A" else "B"
            mutated = {**bundle, part: text[:i] + replacement + text[i + 1 :]}
            with pytest.raises(ReceiptInvalid):
                check_bundle(mutated, jwks_doc, verifiers)
    proof = bundle["inclusion_proof"]
    for field in ("seq", "tree_size"):
        for delta in (-1, 1):
            mutated = {**bundle, "inclusion_proof": {**proof, field: proof[field] + delta}}
            with pytest.raises(ReceiptInvalid):
                check_bundle(mutated, jwks_doc, verifiers)


def test_proof_hash_mutations_are_rejected(server: Server) -> None:
    acme, hashed = _setup(server)
    with server.client(acme["api_key"]) as http:
        for i in range(5):
            more = {**EVENT, "consent_id": f"m-{i}", "phone": f"+44791112340{i}"}
            assert http.post("/v1/consent-events", json=more).status_code == 201
        bundle = http.get(
            f"/v1/subjects/{hashed}/receipt", params={"consent_type": "marketing_rcs"}
        ).json()
        verifiers = http.get("/v1/ledger/key").text.split()
    hashes = bundle["inclusion_proof"]["hashes"]
    assert len(hashes) >= 2
    jwks_doc = _jwks(server)
    for n, h in enumerate(hashes):
        for i in range(len(h)):
            swapped = h[:i] + ("A" if h[i] != "A" else "B") + h[i + 1 :]
            proof = {
                **bundle["inclusion_proof"],
                "hashes": [*hashes[:n], swapped, *hashes[n + 1 :]],
            }
            with pytest.raises(ReceiptInvalid):
                check_bundle({**bundle, "inclusion_proof": proof}, jwks_doc, verifiers)


def test_receipts_survive_signing_key_rotation(server: Server) -> None:
    acme, hashed = _setup(server)
    with server.client(acme["api_key"]) as http:
        before = http.get(
            f"/v1/subjects/{hashed}/receipt", params={"consent_type": "marketing_rcs"}
        ).json()
        server.cli("keys", "rotate", "--tenant", "acme", "--kind", "signing")
        assert (
            http.post(
                "/v1/consent-events",
                json={**EVENT, "consent_id": "r-2", "timestamp": "2026-11-02T10:00:00Z"},
            ).status_code
            == 201
        )
        after = http.get(
            f"/v1/subjects/{hashed}/receipt", params={"consent_type": "marketing_rcs"}
        ).json()
        all_keys = http.get("/v1/ledger/key", params={"all": "true"}).text.split()
        current = http.get("/v1/ledger/key").text.split()
    jwks_doc = _jwks(server)
    assert len(jwks_doc["keys"]) == 2 and len(all_keys) == 2
    assert check_bundle(before, jwks_doc, all_keys)["ledger_seq"] == 0
    assert check_bundle(after, jwks_doc, current)["ledger_seq"] == 1
    with pytest.raises(ReceiptInvalid):
        check_bundle(before, jwks_doc, current)  # the old checkpoint needs the retired key


def test_consent_tokens(server: Server) -> None:
    acme, hashed = _setup(server)
    with server.client(acme["api_key"]) as http:
        r = http.post(
            "/v1/consent-tokens",
            json={"hashed_id": hashed, "consent_type": "marketing_rcs", "ttl_seconds": 600},
        )
        assert r.status_code == 200, r.text
        token = jwt.JWT(
            jwt=r.json()["token"],
            key=jwk.JWKSet.from_json(json.dumps(_jwks(server))),
            algs=["EdDSA"],
        )
        claims = json.loads(token.claims)
        assert claims["sub"] == hashed and claims["status"] == "granted"
        assert claims["consent_type"] == "marketing_rcs" and claims["exp"] - claims["iat"] == 600
        by_phone = http.post(
            "/v1/consent-tokens", json={"phone": "+447911123456", "consent_type": "marketing_rcs"}
        )
        assert by_phone.status_code == 200
        too_long = http.post(
            "/v1/consent-tokens",
            json={"hashed_id": hashed, "consent_type": "marketing_rcs", "ttl_seconds": 901},
        )
        assert too_long.status_code == 422 and too_long.json()["field"] == "ttl_seconds"
        none = http.post(
            "/v1/consent-tokens", json={"hashed_id": hashed, "consent_type": "analytics"}
        )
        assert none.status_code == 403 and none.json()["reason"] == "no_consent"
        http.post(
            "/v1/consent-events",
            json={
                **EVENT,
                "consent_id": "w",
                "status": "withdrawn",
                "timestamp": "2026-11-03T10:00:00Z",
            },
        )
        gone = http.post(
            "/v1/consent-tokens", json={"hashed_id": hashed, "consent_type": "marketing_rcs"}
        )
        assert gone.status_code == 403 and gone.json()["reason"] == "withdrawn"
        stranger = http.post(
            "/v1/consent-tokens", json={"phone": "+447911223344", "consent_type": "marketing_rcs"}
        )
        assert stranger.status_code == 403 and stranger.json()["reason"] == "no_consent"


def _cmp_key() -> tuple[jwk.JWK, dict[str, Any]]:
    key = jwk.JWK.generate(kty="EC", crv="P-256", kid="cmp-key-1", alg="ES256")
    return key, json.loads(key.export_public())


def _cmp_receipt(key: jwk.JWK, consent_id: str) -> str:
    token = jws.JWS(json.dumps({"consent_id": consent_id, "iat": 1_790_000_000}).encode())
    token.add_signature(key, alg="ES256", protected={"alg": "ES256", "kid": "cmp-key-1"})
    return str(token.serialize(compact=True))


def test_cmp_signed_receipts(server: Server) -> None:
    acme = server.create_tenant("acme")
    key, public = _cmp_key()
    with server.client(acme["api_key"]) as http:
        private = json.loads(key.export_private())
        refused = http.put("/v1/cmp/keys", json={"jwks": {"keys": [private]}})
        assert refused.status_code == 422
        assert http.put("/v1/cmp/keys", json={"jwks": {"keys": [public]}}).status_code == 200
        ok = http.post("/v1/consent-events", json={**EVENT, "receipt": _cmp_receipt(key, "r-1")})
        assert ok.status_code == 201
        leaf = json.loads(http.get(f"/v1/ledger/entries/{ok.json()['seq']}").content)
        assert leaf["cmp_receipt"]["verified"] is True and leaf["cmp_receipt"]["kid"] == "cmp-key-1"
        other = http.post(
            "/v1/consent-events",
            json={**EVENT, "consent_id": "r-2", "receipt": _cmp_receipt(key, "nope")},
        )
        assert other.status_code == 201
        leaf = json.loads(http.get(f"/v1/ledger/entries/{other.json()['seq']}").content)
        assert leaf["cmp_receipt"]["verified"] is False

        assert (
            http.put(
                "/v1/cmp/keys", json={"jwks": {"keys": [public]}, "require_signed_receipts": True}
            ).status_code
            == 200
        )
        size = int(http.get("/v1/ledger/checkpoint").text.split("\n")[1])
        forged = _cmp_receipt(key, "r-3")
        forged = forged[:-4] + ("AAAA" if not forged.endswith("AAAA") else "BBBB")
        for receipt, what in (
            (None, "missing"),
            (_cmp_receipt(key, "other"), "mismatch"),
            (forged, "forged"),
        ):
            body = {**EVENT, "consent_id": "r-3"}
            if receipt is not None:
                body["receipt"] = receipt
            r = http.post("/v1/consent-events", json=body)
            assert r.status_code == 422, what
            assert r.json()["field"] == "receipt"
        assert int(http.get("/v1/ledger/checkpoint").text.split("\n")[1]) == size
        good = http.post(
            "/v1/consent-events",
            json={**EVENT, "consent_id": "r-3", "receipt": _cmp_receipt(key, "r-3")},
        )
        assert good.status_code == 201
