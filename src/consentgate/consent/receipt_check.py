"""Offline verification of a consent receipt bundle: no database, no network.

A bundle is what ``GET /v1/subjects/{hashed_id}/receipt`` returns. It holds when:
the JWS verifies under a key of the tenant's JWKS (by ``kid``); its claims restate the leaf;
the leaf's hash is included under the checkpoint's root at the checkpoint's size; and the
checkpoint's signed note verifies under one of the ledger verifier keys (retired keys
included, so receipts issued before a signing-key rotation keep verifying).
"""

from __future__ import annotations

import binascii
import json
from typing import Any

from consentgate.crypto.jws import JwsError, verify_eddsa
from consentgate.encoding import b64decode_strict
from consentgate.ledger import merkle
from consentgate.ledger.checkpoint import NoteError, verify_note


class ReceiptInvalid(ValueError):
    """The bundle does not prove what it claims; the message says which check failed."""


# Claim → leaf field that it must restate exactly.
_RESTATED = {
    "consent_type": "consent_type",
    "status": "status",
    "consent_timestamp": "timestamp",
    "consent_id": "consent_id",
    "ledger_seq": "seq",
    "collection_method": "source",
    "cmp_version": "cmp_version",
    "policy_version": "policy_version",
    "jurisdiction": "jurisdiction",
    "tenant": "tenant",
}


def check_bundle(bundle: Any, jwks: dict[str, Any], verifier_keys: list[str]) -> dict[str, Any]:
    """Return the verified claims, or raise :class:`ReceiptInvalid` naming the failed check."""
    if not isinstance(bundle, dict):
        raise ReceiptInvalid("the bundle is not a JSON object")
    try:
        token, leaf_text = bundle["receipt"], bundle["leaf"]
        proof, note = bundle["inclusion_proof"], bundle["checkpoint"]
        seq, size = int(proof["seq"]), int(proof["tree_size"])
        hashes = [b64decode_strict(h) for h in proof["hashes"]]
        leaf = leaf_text.encode("utf-8")
    except (KeyError, TypeError, ValueError, binascii.Error, AttributeError):
        raise ReceiptInvalid("the bundle is missing or has malformed fields") from None
    try:
        claims = verify_eddsa(token, jwks).claims
    except JwsError as exc:
        raise ReceiptInvalid(f"receipt signature: {exc}") from None
    try:
        doc = json.loads(leaf)
    except json.JSONDecodeError:
        raise ReceiptInvalid("the leaf is not JSON") from None
    if not isinstance(doc, dict):
        raise ReceiptInvalid("the leaf is not a JSON object")
    leaf_hash = merkle.leaf_hash(leaf)
    if claims.get("leaf_hash") != leaf_hash.hex():
        raise ReceiptInvalid("the receipt's leaf_hash is not the hash of the leaf")
    for claim, field in _RESTATED.items():
        if claims.get(claim) != doc.get(field):
            raise ReceiptInvalid(f"the receipt's {claim} does not match the leaf")
    if seq != doc.get("seq"):
        raise ReceiptInvalid("the proof is for another seq than the leaf's")
    try:
        checkpoint = verify_note(note, verifier_keys)
    except NoteError as exc:
        raise ReceiptInvalid(f"checkpoint: {exc}") from None
    if checkpoint.origin != claims.get("ledger_origin"):
        raise ReceiptInvalid("the checkpoint is from another ledger than the receipt names")
    if size != checkpoint.size:
        raise ReceiptInvalid("the proof is for another tree size than the checkpoint's")
    try:
        merkle.verify_inclusion(leaf_hash, seq, size, hashes, checkpoint.root_hash)
    except merkle.ProofError as exc:
        raise ReceiptInvalid(f"inclusion proof: {exc}") from None
    return claims
