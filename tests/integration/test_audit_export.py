"""Export bundles on SQLite and PostgreSQL: they verify offline, and each check holds on its
own — a bundle altered and then re-signed with the tenant's real key (as a compromised or
buggy signer would) still fails on the ledger evidence."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from consentgate.audit import BundleInvalid, verify_bundle
from consentgate.audit.export import seal
from consentgate.bootstrap import App
from consentgate.consent.ingest import EventInput
from consentgate.crypto.signing import public_jwk
from consentgate.domain.clock import FixedClock
from consentgate.domain.timeutil import format_rfc3339
from consentgate.errors import InvalidInput, NotFound
from consentgate.storage.engine import read_tx

PHONE, OTHER = "+447911100011", "+447911100012"


def jwks(core: App, tenant: str = "acme") -> dict[str, Any]:
    return {"keys": [public_jwk(k.public_key, k.kid) for k in core.keystore.signing_keys(tenant)]}


def verify(core: App, raw: bytes, tenant: str = "acme") -> dict[str, Any]:
    return verify_bundle(raw, jwks(core, tenant), core.ledger.verifier_keys(tenant)).as_dict()


def reseal(core: App, doc: dict[str, Any], tenant: str = "acme") -> bytes:
    return seal(core.keystore, tenant, "https://issuer.test", doc, 0)


@pytest.fixture
def history(core: App, tenant: dict[str, Any], clock: FixedClock) -> dict[str, Any]:
    """A subject with grants and a withdrawal over two purposes, among other subjects."""
    now = clock.now()

    def at(hours: int) -> str:
        return format_rfc3339(now - timedelta(hours=hours))

    events = [
        ("m1", PHONE, "marketing_rcs", "granted", at(50)),
        ("o1", OTHER, "marketing_rcs", "granted", at(49)),
        ("m2", PHONE, "marketing_rcs", "withdrawn", at(40)),
        ("t1", PHONE, "transactional_rcs", "granted", at(45)),
        ("m3", PHONE, "marketing_rcs", "granted", at(30)),
        ("m0", PHONE, "marketing_rcs", "granted", at(60)),  # late: older than the rest
    ]
    results = []
    for consent_id, phone, purpose, status, ts in events:
        clock.advance(timedelta(minutes=1))
        results += core.ingest.ingest(
            "acme",
            "GB",
            [EventInput(consent_id, purpose, status, ts, phone=phone)],
            batch=False,
        )
    return {
        "hashed_id": results[0].hashed_id,
        "seqs": {e[0]: r.seq for e, r in zip(events, results, strict=True)},
    }


def test_bundle_verifies_offline(core: App, history: dict[str, Any]) -> None:
    raw = core.exports.export("acme", history["hashed_id"])
    summary = verify(core, raw)
    assert summary["ok"] and summary["hashed_id"] == history["hashed_id"]
    assert summary["leaves"] == 5 and summary["receipts"] == 2 and summary["tree_size"] == 6
    doc = json.loads(raw)
    seqs = history["seqs"]
    assert [leaf["seq"] for leaf in doc["leaves"]] == sorted(
        seqs[k] for k in ("m1", "m2", "t1", "m3", "m0")
    )
    assert {p: r["inclusion_proof"]["seq"] for p, r in doc["receipts"].items()} == {
        "marketing_rcs": seqs["m3"],
        "transactional_rcs": seqs["t1"],
    }
    with read_tx(core.engine) as conn:
        assert doc["checkpoint"] == core.ledger.latest_checkpoint(conn, "acme").note
    assert doc["keys"]["ledger_verifier_keys"] == core.ledger.verifier_keys("acme")
    assert raw == raw.strip() and b"\n " not in raw  # compact canonical bytes


def test_unknown_or_foreign_subject_is_not_found(core: App, history: dict[str, Any]) -> None:
    core.tenants.create("beta", "GB")
    with pytest.raises(NotFound):
        core.exports.export("beta", history["hashed_id"])
    with pytest.raises(NotFound):
        core.exports.export("acme", "0" * 64)
    with pytest.raises(InvalidInput):
        core.exports.export("acme", "not-a-hash")


def _send(message_id: str, seq: int | None, at: str, action: str = "sent") -> dict[str, Any]:
    return {
        "message_id": message_id,
        "consent_type": "marketing_rcs",
        "action": action,
        "mode": "native_e2ee",
        "reason": None,
        "consent_seq": seq,
        "template_id": "t",
        "campaign_id": None,
        "device_kid": None,
        "status": "sent",
        "at": at,
        "events": [],
    }


def test_resigned_tampering_is_caught_by_the_evidence(
    core: App, history: dict[str, Any], clock: FixedClock
) -> None:
    raw = core.exports.export("acme", history["hashed_id"])
    good = json.loads(raw)
    seqs = history["seqs"]
    now = clock.now()

    def fails(doc: dict[str, Any], message: str) -> None:
        with pytest.raises(BundleInvalid, match=message):
            verify(core, reseal(core, doc))

    assert verify(core, reseal(core, good))["ok"]  # re-signing alone changes nothing

    # A leaf's bytes changed: its proof no longer reaches the signed root.
    doc = json.loads(raw)
    doc["leaves"][0]["leaf"] = doc["leaves"][0]["leaf"].replace('"granted"', '"withdrawn"')
    fails(doc, "inclusion proof")
    # A leaf of another subject slipped in.
    doc = json.loads(raw)
    doc["subject_ref"] = "00000000-0000-4000-8000-000000000000"
    fails(doc, "does not belong to this subject")
    # The decisive withdrawal left out: the receipt's leaf is no longer what the leaves decide.
    doc = json.loads(raw)
    doc["leaves"] = [x for x in doc["leaves"] if x["seq"] != seqs["m3"]]
    fails(doc, "receipt for marketing_rcs")
    # A receipt dropped while its purpose has decisions.
    doc = json.loads(raw)
    del doc["receipts"]["transactional_rcs"]
    fails(doc, "no receipt for transactional_rcs")
    # A send citing a withdrawal, a grant that a known withdrawal had ended, nothing at all.
    later = format_rfc3339(now + timedelta(hours=1))  # every leaf received by then
    fails({**good, "sends": [_send("s1", seqs["m2"], later)]}, "not a grant")
    fails({**good, "sends": [_send("s2", seqs["m1"], later)]}, "withdrew marketing_rcs")
    fails({**good, "sends": [_send("s3", None, later)]}, "without a consent leaf")
    fails({**good, "sends": [_send("s4", 99, later)]}, "not in the bundle")
    # ... while a send the leaves allow, a skip with no leaf, and a send that a withdrawal
    # not yet received could not have stopped (reported as late), pass.
    early = format_rfc3339(now - timedelta(hours=35))  # after m2's timestamp, before its arrival
    ok = {
        **good,
        "sends": [
            _send("s5", seqs["m3"], later),
            _send("s6", None, later, "skipped"),
            _send("s7", seqs["m1"], early),
        ],
    }
    summary = verify(core, reseal(core, ok))
    assert summary["sends_checked"] == 2
    assert summary["late_withdrawals"] == [{"message_id": "s7", "withdrawal_seq": seqs["m2"]}]


def test_other_keys_and_other_checkpoints_fail(
    core: App, history: dict[str, Any], clock: FixedClock
) -> None:
    raw = core.exports.export("acme", history["hashed_id"])
    core.tenants.create("beta", "GB")
    # Signed by another tenant's key: not in acme's JWKS.
    with pytest.raises(BundleInvalid, match="bundle signature"):
        verify(core, reseal(core, json.loads(raw), "beta"))
    # Verified with another tenant's keys.
    with pytest.raises(BundleInvalid, match="bundle signature"):
        verify_bundle(raw, jwks(core, "beta"), core.ledger.verifier_keys("acme"))
    with pytest.raises(BundleInvalid, match="checkpoint"):
        verify_bundle(raw, jwks(core), core.ledger.verifier_keys("beta"))
    # A genuine but older checkpoint: the proofs are for another tree.
    with read_tx(core.engine) as conn:
        rows = conn.exec_driver_sql(
            "SELECT note FROM checkpoints WHERE tenant_id = 'acme' ORDER BY tree_size"
        ).all()
    doc = json.loads(raw)
    doc["checkpoint"] = rows[-2][0]
    with pytest.raises(BundleInvalid, match="inclusion proof"):
        verify(core, reseal(core, doc))


def test_single_byte_flips_fail(core: App, history: dict[str, Any]) -> None:
    raw = core.exports.export("acme", history["hashed_id"])
    keys, verifiers = jwks(core), core.ledger.verifier_keys("acme")
    positions = sorted(
        {*range(0, len(raw), max(1, len(raw) // 300)), *range(len(raw) - 40, len(raw))}
    )
    for n, pos in enumerate(positions):
        flipped = bytearray(raw)
        flipped[pos] ^= (0x01, 0x20, 0x80, 0x04)[n % 4]
        with pytest.raises(BundleInvalid):
            verify_bundle(bytes(flipped), keys, verifiers)
    assert verify_bundle(raw, keys, verifiers).leaves == 5
