"""Offline verification of an audit export bundle: no database, no network.

The caller brings the trust anchors (the tenant's JWKS and the ledger verifier keys, obtained
independently of the bundle). In order, the first failure wins:

1. the file is exactly the canonical (RFC 8785) bytes of a bundle of this format;
2. the bundle signature verifies under the JWKS and its digest is the bundle's;
3. the checkpoint's signed note verifies under a verifier key, for this tenant's ledger;
4. every leaf belongs to this tenant and subject and is included under the checkpoint root;
5. every receipt verifies (:func:`consentgate.consent.receipt_check.check_bundle`), names this
   subject and purpose, is proved against the same checkpoint, restates a leaf of the bundle,
   and that leaf is the one the latest-state rule picks from the bundle's leaves — and each
   purpose with a decision has its receipt;
6. every send that cites a consent leaf finds it in the bundle, a grant for the send's
   purpose in force at the send (:func:`consentgate.audit.bundle.send_in_force`); a send that
   went out cites one.
"""

from __future__ import annotations

import binascii
import json
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from consentgate.audit.bundle import FORMAT, SIGNATURE_TYP, LeafFacts, digest, send_in_force
from consentgate.audit.sends import WENT_OUT
from consentgate.consent.receipt_check import ReceiptInvalid, check_bundle
from consentgate.crypto.jws import JwsError, verify_eddsa
from consentgate.domain import consent as rules
from consentgate.domain.consent import ConsentStatus, StateEntry
from consentgate.domain.timeutil import from_micros, parse_rfc3339, to_micros
from consentgate.encoding import b64decode_strict
from consentgate.errors import InvalidInput
from consentgate.ledger import merkle
from consentgate.ledger.checkpoint import Checkpoint, NoteError, verify_note
from consentgate.ledger.leaf import canonical


class BundleInvalid(ValueError):
    """The bundle does not prove what it claims; the message names the first failed check."""


@dataclass
class Summary:
    tenant: str
    hashed_id: str
    tree_size: int
    leaves: int
    receipts: int
    sends: int
    sends_checked: int
    late_withdrawals: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": True, **self.__dict__}


def _instant(value: Any) -> int:
    try:
        return to_micros(parse_rfc3339(value))
    except InvalidInput:
        raise BundleInvalid("a timestamp is not RFC 3339") from None


def _parse(raw: bytes) -> dict[str, Any]:
    body = raw[:-1] if raw.endswith(b"\n") else raw
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise BundleInvalid("the bundle is not UTF-8 JSON") from None
    if not isinstance(doc, dict):
        raise BundleInvalid("the bundle is not a JSON object")
    try:
        exact = canonical(doc) == body
    except (TypeError, ValueError):
        exact = False
    if not exact:
        raise BundleInvalid("the bundle is not in its canonical (RFC 8785) form, byte for byte")
    if doc.get("format") != FORMAT:
        raise BundleInvalid(f"the bundle is not a {FORMAT} document")
    return doc


def _check_signature(doc: dict[str, Any], jwks: dict[str, Any]) -> None:
    try:
        verified = verify_eddsa(doc["signature"], jwks)
    except JwsError as exc:
        raise BundleInvalid(f"bundle signature: {exc}") from None
    claims = verified.claims
    if verified.header.get("typ") != SIGNATURE_TYP:
        raise BundleInvalid("bundle signature: not an audit-bundle signature")
    if claims.get("bundle_sha256") != digest(doc):
        raise BundleInvalid("bundle signature: it signs other contents")
    if claims.get("sub") != doc["hashed_id"] or claims.get("tenant") != doc["tenant"]:
        raise BundleInvalid("bundle signature: it names another subject or tenant")


def _check_leaves(doc: dict[str, Any], checkpoint: Checkpoint) -> dict[int, tuple[str, LeafFacts]]:
    found: dict[int, tuple[str, LeafFacts]] = {}
    previous = -1
    for item in doc["leaves"]:
        seq, text = item["seq"], item["leaf"]
        if not isinstance(seq, int) or not isinstance(text, str) or seq <= previous:
            raise BundleInvalid("leaves must be listed once each, in seq order")
        previous = seq
        data = text.encode("utf-8")
        leaf = json.loads(data)
        if (
            not isinstance(leaf, dict)
            or leaf.get("seq") != seq
            or leaf.get("tenant") != doc["tenant"]
            or leaf.get("subject_ref") != doc["subject_ref"]
        ):
            raise BundleInvalid(f"leaf {seq} does not belong to this subject at this seq")
        try:
            hashes = [b64decode_strict(h) for h in item["inclusion_proof"]]
            merkle.verify_inclusion(
                merkle.leaf_hash(data), seq, checkpoint.size, hashes, checkpoint.root_hash
            )
        except ValueError as exc:  # ProofError or a malformed hash
            raise BundleInvalid(f"leaf {seq}: inclusion proof: {exc}") from None
        facts = LeafFacts(
            seq,
            str(leaf["consent_type"]),
            str(leaf["status"]),
            _instant(leaf["timestamp"]),
            _instant(leaf["received_at"]),
            str(leaf["consent_id"]),
        )
        found[seq] = (text, facts)
    return found


def _check_receipts(
    doc: dict[str, Any],
    leaves: dict[int, tuple[str, LeafFacts]],
    jwks: dict[str, Any],
    verifier_keys: list[str],
) -> None:
    decisions = [f for _, f in leaves.values() if f.is_decision]
    winners = rules.fold(
        (
            "subject",
            f.consent_type,
            StateEntry(ConsentStatus(f.status), from_micros(f.ts_us), f.seq, f.consent_id),
        )
        for f in decisions
    )
    receipts = doc["receipts"]
    missing = sorted({f.consent_type for f in decisions} - set(receipts))
    if missing:
        raise BundleInvalid(f"no receipt for {missing[0]}, which the leaves decide")
    for purpose, receipt in sorted(receipts.items()):
        try:
            claims = check_bundle(receipt, jwks, verifier_keys)
        except ReceiptInvalid as exc:
            raise BundleInvalid(f"receipt for {purpose}: {exc}") from None
        seq = claims.get("ledger_seq")
        if claims.get("consent_type") != purpose or claims.get("sub") != doc["hashed_id"]:
            raise BundleInvalid(f"receipt for {purpose}: it names another purpose or subject")
        if receipt["checkpoint"] != doc["checkpoint"]:
            raise BundleInvalid(f"receipt for {purpose}: proved against another checkpoint")
        if not isinstance(seq, int) or seq not in leaves or leaves[seq][0] != receipt["leaf"]:
            raise BundleInvalid(f"receipt for {purpose}: its leaf is not a leaf of the bundle")
        winner = winners.get(("subject", purpose))
        if winner is None or winner.event_seq != seq:
            raise BundleInvalid(
                f"receipt for {purpose}: the bundle's leaves decide by another leaf"
            )


def _check_sends(
    doc: dict[str, Any], leaves: dict[int, tuple[str, LeafFacts]], summary: Summary
) -> None:
    rules_ = doc["rules"]
    skew = timedelta(seconds=int(rules_["future_skew_seconds"]))
    max_ages: dict[str, Any] = rules_["max_age_seconds"]
    facts = [f for _, f in leaves.values()]
    for send in doc["sends"]:
        message_id, seq, purpose = send["message_id"], send["consent_seq"], send["consent_type"]
        if seq is None:
            if send["action"] in WENT_OUT:
                raise BundleInvalid(f"send {message_id} went out without a consent leaf")
            continue
        if seq not in leaves:
            raise BundleInvalid(f"send {message_id}: its consent leaf {seq} is not in the bundle")
        seconds = max_ages.get(purpose)
        verdict = send_in_force(
            _instant(send["at"]),
            purpose,
            leaves[seq][1],
            facts,
            None if seconds is None else timedelta(seconds=int(seconds)),
            skew,
        )
        if verdict.problem is not None:
            raise BundleInvalid(f"send {message_id}: {verdict.problem}")
        summary.sends_checked += 1
        for late in verdict.late_withdrawals:
            summary.late_withdrawals.append({"message_id": message_id, "withdrawal_seq": late})


def verify_bundle(raw: bytes, jwks: dict[str, Any], verifier_keys: list[str]) -> Summary:
    """Check ``raw`` (the bundle file's bytes); the summary, or :class:`BundleInvalid`."""
    doc = _parse(raw)
    try:
        _check_signature(doc, jwks)
        try:
            checkpoint = verify_note(doc["checkpoint"], verifier_keys)
        except NoteError as exc:
            raise BundleInvalid(f"checkpoint: {exc}") from None
        if not checkpoint.origin.endswith("/" + doc["tenant"]):
            raise BundleInvalid("the checkpoint is from another tenant's ledger")
        leaves = _check_leaves(doc, checkpoint)
        _check_receipts(doc, leaves, jwks, verifier_keys)
        summary = Summary(
            doc["tenant"],
            doc["hashed_id"],
            checkpoint.size,
            len(leaves),
            len(doc["receipts"]),
            len(doc["sends"]),
            0,
        )
        _check_sends(doc, leaves, summary)
    except (KeyError, TypeError, AttributeError, ValueError, binascii.Error) as exc:
        if isinstance(exc, BundleInvalid):
            raise
        raise BundleInvalid("the bundle is missing or has malformed fields") from None
    return summary
