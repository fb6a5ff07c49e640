"""Ed25519 signatures and their public forms (raw bytes, JWK with an RFC 7638 thumbprint kid)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def generate_signing_key() -> tuple[bytes, bytes]:
    """A new Ed25519 key: (private seed, public key), both 32 raw bytes."""
    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes_raw()
    return seed, public_from_seed(seed)


def public_from_seed(seed: bytes) -> bytes:
    return (
        Ed25519PrivateKey.from_private_bytes(seed)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )


def sign(seed: bytes, data: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(seed).sign(data)


def signer(seed: bytes) -> Callable[[bytes], bytes]:
    """A signing function holding the loaded key (for repeated signatures)."""
    return Ed25519PrivateKey.from_private_bytes(seed).sign


def verify(public_key: bytes, signature: bytes, data: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


def jwk_thumbprint(public_key: bytes) -> str:
    """RFC 7638 thumbprint of the OKP/Ed25519 JWK: the key's ``kid``."""
    members = {"crv": "Ed25519", "kty": "OKP", "x": b64url(public_key)}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return b64url(hashlib.sha256(canonical).digest())


def public_jwk(public_key: bytes, kid: str) -> dict[str, str]:
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": b64url(public_key),
        "kid": kid,
        "alg": "EdDSA",
        "use": "sig",
    }
