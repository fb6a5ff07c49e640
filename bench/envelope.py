"""Figures 10-13: the app-layer envelope, ``consentgate.crypto.envelope.seal``, per call, for
both pinned suites (X25519 and ML-KEM-768 + X25519) and two signers:

* ``keystore``: ``lambda d: keystore.sign(tenant, d).signature``, what MessageService does
  (a ``LocalKeyStore`` as bootstrap builds it, one tenant; the key store unwraps its cached
  seed and loads the Ed25519 key on every call);
* ``preloaded``: the ``sign`` method of a ``cryptography`` Ed25519 key loaded once.

Baseline, same run, same plaintext bytes and ``info``: a bare ``hpke.Suite.encrypt`` of the
suite (RFC 9180 single-shot base mode, the same KEM/KDF/AEAD). Floor: seal ≤ 1.3 × the bare
encrypt's time. seal adds an Ed25519 signature the bare encrypt does not make, so each figure
also reports seal beside bare encrypt + one bare Ed25519 sign (preloaded key) of an input as
long as seal's signature input.

No database: measured once. Variants alternate in rounds, so drift on a shared machine hits
all of them alike.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.common import Figure, latency_summary
from bench.config import Sizes
from consentgate.crypto.envelope import (
    SUITE_MLKEM768_X25519,
    SUITE_X25519,
    envelope_info,
    generate_recipient_key,
    open_envelope,
    seal,
)
from consentgate.crypto.keystore import LocalKeyStore

BACKEND = "in-process"
TENANT = "env"
FACTOR = 1.3  # floor: seal ≤ 1.3 × bare encrypt
PLAINTEXT = {
    "text": "Hi Ada, your order 4711 has shipped: it arrives tomorrow between 9 and 11. "
    "Reply STOP to opt out."
}
TEMPLATE_ID = "3f6c1a52-8d0e-4a7b-9c44-2b1f0e9d7a61"
EXP = 1_900_000_000
KEMS = {SUITE_X25519: hpke.KEM.X25519, SUITE_MLKEM768_X25519: hpke.KEM.MLKEM768_X25519}
SHORT = {SUITE_X25519: "x25519", SUITE_MLKEM768_X25519: "hybrid"}


def _signature_input(envelope: dict[str, Any]) -> bytes:
    """What seal signed: the canonical JSON of the envelope without "sig" (docs/envelope.md)."""
    unsigned = {k: v for k, v in envelope.items() if k != "sig"}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":")).encode("ascii")


def _timed(fn: Callable[[int], Any], indices: range) -> list[float]:
    clock = time.perf_counter
    times = []
    for i in indices:
        t0 = clock()
        fn(i)
        times.append(clock() - t0)
    return times


def run(sizes: Sizes) -> list[Figure]:
    workdir = Path(tempfile.mkdtemp(prefix="consentgate-bench-envelope-"))
    try:
        return _run(sizes, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run(sizes: Sizes, workdir: Path) -> list[Figure]:
    keystore = LocalKeyStore(workdir / "keys")
    keystore.create_tenant(TENANT)
    tenant_keys = [k.public_key for k in keystore.signing_keys(TENANT)]
    preloaded = Ed25519PrivateKey.generate()
    signers: dict[str, Callable[[bytes], bytes]] = {
        "keystore": lambda d: keystore.sign(TENANT, d).signature,
        "preloaded": preloaded.sign,
    }
    rng = random.Random(41)
    total = sizes.envelope_warmup + sizes.envelope_seals
    message_ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(total)]
    infos = [
        envelope_info(tenant=TENANT, message_id=m, template_id=TEMPLATE_ID, exp=EXP)
        for m in message_ids
    ]
    plaintext = json.dumps(PLAINTEXT, separators=(",", ":"), ensure_ascii=False).encode()

    context = _Context(sizes, signers, preloaded, tenant_keys, message_ids, infos, plaintext)
    return [f for suite in (SUITE_X25519, SUITE_MLKEM768_X25519) for f in _suite(context, suite)]


@dataclass(frozen=True)
class _Context:
    sizes: Sizes
    signers: dict[str, Callable[[bytes], bytes]]
    preloaded: Ed25519PrivateKey
    tenant_keys: list[bytes]
    message_ids: list[str]
    infos: list[bytes]
    plaintext: bytes


def _suite(c: _Context, suite: str) -> list[Figure]:
    sizes, signers, preloaded = c.sizes, c.signers, c.preloaded
    message_ids, infos, plaintext = c.message_ids, c.infos, c.plaintext
    tenant_keys = c.tenant_keys
    total = sizes.envelope_warmup + sizes.envelope_seals
    figures: list[Figure] = []
    rounds = max(1, sizes.envelope_rounds)
    per_round = max(1, sizes.envelope_seals // rounds)
    recipient = generate_recipient_key(suite)
    device = recipient.public
    bare = hpke.Suite(KEMS[suite], hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
    bare_encrypt = bare.encrypt
    key_object = device.key

    def sealer(sign: Callable[[bytes], bytes], suite: str = suite) -> Callable[[int], Any]:
        def one(i: int) -> Any:
            return seal(
                PLAINTEXT,
                recipient_public=device,
                suite=suite,
                kid=device.kid,
                tenant=TENANT,
                message_id=message_ids[i],
                template_id=TEMPLATE_ID,
                exp=EXP,
                sign=sign,
            )

        return one

    # Both signers make envelopes that open (untimed), with the key store's public key or
    # the preloaded key's.
    for name, sign in signers.items():
        env = sealer(sign)(0)
        keys = tenant_keys if name == "keystore" else [preloaded.public_key().public_bytes_raw()]
        opened = open_envelope(
            env, private_key=recipient.private_key, tenant_public_keys=keys, now=EXP - 10
        )
        if opened != PLAINTEXT:
            raise RuntimeError("a sealed envelope did not open to its plaintext")
    # Signature inputs as long as seal's (from warm-up envelopes), for bare encrypt + sign.
    warm_envelopes = [sealer(signers["preloaded"])(i) for i in range(sizes.envelope_warmup)]
    sig_inputs = [_signature_input(e) for e in warm_envelopes]
    bare_sign = preloaded.sign

    def raw(i: int) -> Any:
        return bare_encrypt(plaintext, key_object, info=infos[i])

    def raw_and_sign(i: int) -> Any:
        sealed = bare_encrypt(plaintext, key_object, info=infos[i])
        return sealed, bare_sign(sig_inputs[i % len(sig_inputs)])

    variants: dict[str, Callable[[int], Any]] = {
        "seal_keystore": sealer(signers["keystore"]),
        "seal_preloaded": sealer(signers["preloaded"]),
        "raw_encrypt": raw,
        "raw_encrypt_sign": raw_and_sign,
    }
    warm = range(sizes.envelope_warmup)
    for fn in variants.values():  # warm-up, excluded
        _timed(fn, warm)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds):
        start = sizes.envelope_warmup + r * per_round
        indices = range(start, min(total, start + per_round))
        for name, fn in variants.items():
            times[name].extend(_timed(fn, indices))

    def mean_us(name: str) -> float:
        return sum(times[name]) / len(times[name]) * 1e6

    raw_us, raw_sign_us = mean_us("raw_encrypt"), mean_us("raw_encrypt_sign")
    sizes_bytes = {
        "plaintext": len(plaintext),
        "info": len(infos[0]),
        "signature_input": len(sig_inputs[0]),
        "envelope_json": len(json.dumps(warm_envelopes[0], separators=(",", ":"))),
    }
    for signer in ("keystore", "preloaded"):
        name = f"seal_{signer}"
        value = mean_us(name)
        figures.append(
            Figure(
                BACKEND,
                f"envelope_{SHORT[suite]}_{signer}",
                f"envelope seal µs/call, {suite}, signer: "
                + ("core.keystore.sign" if signer == "keystore" else "preloaded Ed25519 key"),
                "µs",
                value=value,
                baseline_title="bare hpke.Suite.encrypt, same plaintext + info",
                baseline=raw_us,
                floor=FACTOR * raw_us,
                floor_kind="max",
                details={
                    "floor_is": f"{FACTOR} × the bare encrypt's mean time measured in this run",
                    "seals": len(times[name]),
                    "warmup_excluded": sizes.envelope_warmup,
                    "rounds": rounds,
                    "seals_per_s": 1e6 / value,
                    "latency": latency_summary(times[name]),
                    "baseline_latency": latency_summary(times["raw_encrypt"]),
                    "raw_encrypt_plus_sign": {
                        "mean_us": raw_sign_us,
                        "latency": latency_summary(times["raw_encrypt_sign"]),
                        "seal_over_it": value / raw_sign_us,
                        "what": "bare encrypt + one Ed25519 sign (key loaded once) of "
                        "a signature input as long as seal's",
                    },
                    "ed25519_sign_alone_us": raw_sign_us - raw_us,
                    "bytes": sizes_bytes,
                    "recipient": "DevicePublicKey (parsed once, as MessageService passes it)",
                    "includes": "argument checks, info (canonical JSON), plaintext JSON, "
                    "HPKE seal, base64url, canonical JSON signature input, Ed25519 sign"
                    + (
                        " via the key store (seed unwrapped from its cache, key loaded per call)"
                        if signer == "keystore"
                        else ""
                    ),
                    "threads": 1,
                },
            )
        )
    return figures
