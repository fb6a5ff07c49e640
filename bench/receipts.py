"""Figure 6: consent receipts issued/s (``core.receipts.receipt``, in-process) beside the bare
Ed25519 signature of the same JWS signing inputs; receipts verified offline/s
(``receipt_check.check_bundle``) beside the bare Ed25519 verifications that check does.
"""

from __future__ import annotations

import random
import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bench import data
from bench.backends import Backend
from bench.common import Figure, latency_summary
from bench.config import Sizes
from consentgate.bootstrap import App
from consentgate.consent.ingest import EventInput
from consentgate.consent.receipt_check import check_bundle
from consentgate.crypto.jws import sign_compact, split_compact
from consentgate.crypto.signing import public_jwk
from consentgate.ledger.checkpoint import parse_verifier_key, split_note

TENANT = "rcpt"
PURPOSE = "marketing_rcs"


def _timed(fn: Any, items: list[Any], cap_s: float) -> tuple[list[float], float]:
    """Per-call seconds and wall seconds over ``items``, stopping after ``cap_s``."""
    clock = time.perf_counter
    times: list[float] = []
    t_start = clock()
    for item in items:
        t0 = clock()
        fn(item)
        t1 = clock()
        times.append(t1 - t0)
        if t1 - t_start > cap_s:
            break
    return times, clock() - t_start


def _subjects(core: App, sizes: Sizes) -> list[str]:
    """Subjects with a marketing_rcs grant and one other event each (untimed, real ingest)."""
    core.tenants.create(TENANT, "GB")
    phones = data.phone_numbers(sizes.receipt_subjects, seed=21)
    rng = random.Random(22)
    events = [
        EventInput(
            consent_id=f"rcpt-{k:07d}",
            consent_type=PURPOSE,
            status="granted",
            timestamp="2026-06-01T12:00:00Z",
            source="web",
            phone=phone,
            cmp_version="cmp-6.2",
            policy_version="2026-01",
        )
        for k, phone in enumerate(phones)
    ]
    events += [
        EventInput(
            consent_id=f"rcpt-other-{k:07d}",
            consent_type=rng.choice(data.PURPOSES[1:]),
            status="granted",
            timestamp="2026-06-02T12:00:00Z",
            phone=phone,
        )
        for k, phone in enumerate(phones)
    ]
    rng.shuffle(events)
    hashed: set[str] = set()
    for start in range(0, len(events), 1000):
        results = core.ingest.ingest(TENANT, "GB", events[start : start + 1000], batch=True)
        hashed.update(r.hashed_id for r in results)
    return sorted(hashed)


def _ledger_rows(backend: Backend) -> int:
    """Ledger rows of every tenant: earlier phases (the proof tree above all) stay in the
    database, and the planner's statistics are as they left them."""
    conn = backend.connect()
    try:
        return int(conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0])
    finally:
        conn.close()


def run(backend: Backend, core: App, sizes: Sizes) -> list[Figure]:
    hashed = _subjects(core, sizes)
    database_rows = _ledger_rows(backend)
    rng = random.Random(23)
    order = hashed[:]
    rng.shuffle(order)
    picks = (order * (1 + (sizes.receipt_warmup + sizes.receipts) // len(order)))[
        : sizes.receipt_warmup + sizes.receipts
    ]
    warm, planned = picks[: sizes.receipt_warmup], picks[sizes.receipt_warmup :]

    # -- issuing ------------------------------------------------------------------------------
    issue = core.receipts.receipt
    for h in warm:
        issue(TENANT, h, PURPOSE)
    bundles: list[dict[str, Any]] = []

    def one(h: str) -> None:
        bundles.append(issue(TENANT, h, PURPOSE))

    issue_times, issue_wall = _timed(one, planned, sizes.receipt_seconds)
    timed = len(issue_times)

    # Baseline: the same signing inputs (header.payload of every receipt just issued), signed
    # by cryptography's Ed25519 with a key object loaded once. Same algorithm and lengths as
    # the tenant's key; the seed never leaves the key store, so the key is a fresh one.
    parts = [split_compact(b["receipt"]) for b in bundles]
    inputs = [p[2] for p in parts]
    claims = [p[1] for p in parts]
    bare_key = Ed25519PrivateKey.generate()
    bare_sign = bare_key.sign
    for m in inputs[: sizes.receipt_warmup]:
        bare_sign(m)
    sign_times, sign_wall = _timed(bare_sign, inputs, sizes.receipt_seconds)
    # Diagnostic: the service's own JWS step on the same claims (key store + JSON + base64url).
    keystore = core.keystore
    typ = parts[0][0]["typ"]

    def compact(c: dict[str, Any]) -> None:
        sign_compact(keystore, TENANT, c, typ)

    for c in claims[: sizes.receipt_warmup]:
        compact(c)
    jws_times, jws_wall = _timed(compact, claims, sizes.receipt_seconds)

    issue_fig = Figure(
        backend.name,
        "receipt_issue",
        "receipts issued/s, core.receipts.receipt",
        "receipts/s",
        value=timed / issue_wall,
        baseline_title="bare Ed25519 sign (cryptography) of the same JWS signing inputs",
        baseline=len(sign_times) / sign_wall,
        details={
            "receipts": timed,
            "receipts_planned": len(planned),
            "time_capped": f"stopped after {sizes.receipt_seconds:.0f} s"
            if timed < len(planned)
            else False,
            "warmup_excluded": len(warm),
            "subjects": len(hashed),
            "ledger_tree_size": 2 * len(hashed),
            "ledger_entries_in_database": database_rows,
            "statistics": "as earlier phases left them: no ANALYZE here (this tenant's rows "
            "are too few to trigger autovacuum's analyze on tables that already hold the "
            "proof tree)",
            "latency": latency_summary(issue_times),
            "baseline_latency": latency_summary(sign_times),
            "sign_compact_same_claims": {
                "rate": len(jws_times) / jws_wall,
                "latency": latency_summary(jws_times),
                "what": "consentgate.crypto.jws.sign_compact with the key store, same claims",
            },
            "threads": 1,
            "includes": "read transaction: purpose catalogue, hashed_id → subject, state row, "
            "leaf, latest checkpoint, inclusion proof; claims; EdDSA JWS via the key store",
        },
    )

    # -- offline verification ------------------------------------------------------------------
    jwks = {"keys": [public_jwk(k.public_key, k.kid) for k in keystore.signing_keys(TENANT)]}
    verifiers = core.ledger.verifier_keys(TENANT)
    for b in bundles[: sizes.receipt_warmup]:
        check_bundle(b, jwks, verifiers)

    def check(b: dict[str, Any]) -> None:
        if check_bundle(b, jwks, verifiers)["sub"] is None:
            raise RuntimeError("a receipt verified without a subject")

    verify_times, verify_wall = _timed(check, bundles, sizes.receipt_seconds)
    # Baseline: the two Ed25519 verifications check_bundle makes (the JWS, then the
    # checkpoint note), with public key objects loaded once.
    jws_key = Ed25519PublicKey.from_public_bytes(keystore.signing_keys(TENANT)[-1].public_key)
    _, note_public = parse_verifier_key(verifiers[0])
    note_key = Ed25519PublicKey.from_public_bytes(note_public)
    pairs = []
    for b, (_, _, signing_input, signature) in zip(bundles, parts, strict=True):
        body, sigs = split_note(b["checkpoint"])
        pairs.append((signing_input, signature, body, sigs[0][1][4:]))

    def bare_verify(p: tuple[bytes, bytes, bytes, bytes]) -> None:
        jws_key.verify(p[1], p[0])
        note_key.verify(p[3], p[2])

    for p in pairs[: sizes.receipt_warmup]:
        bare_verify(p)
    bare_times, bare_wall = _timed(bare_verify, pairs, sizes.receipt_seconds)

    verify_fig = Figure(
        backend.name,
        "receipt_verify",
        "receipts verified offline/s, check_bundle",
        "receipts/s",
        value=len(verify_times) / verify_wall,
        baseline_title="2 × bare Ed25519 verify (JWS + checkpoint note), keys loaded once",
        baseline=len(bare_times) / bare_wall,
        details={
            "bundles": len(verify_times),
            "warmup_excluded": min(len(bundles), sizes.receipt_warmup),
            "latency": latency_summary(verify_times),
            "baseline_latency": latency_summary(bare_times),
            "proof_hashes_p50": sorted(len(b["inclusion_proof"]["hashes"]) for b in bundles)[
                len(bundles) // 2
            ],
            "threads": 1,
            "includes": "JWS split + Ed25519 verify (public key decoded per call), claims vs "
            "leaf, leaf hash, verifier key parsing, note verify, inclusion proof to the root",
            "note": "bundles are the receipts issued above (warm-up ones re-checked first)",
        },
    )
    return [issue_fig, verify_fig]
