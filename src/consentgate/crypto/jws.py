"""Compact JWS (RFC 7515): consentgate's own EdDSA signatures, and CMP receipts.

consentgate signs through the key store (the private key never leaves it), so the compact
serialisation is assembled here: ``b64url(header) . b64url(payload) . b64url(signature)``
with ``{"alg": "EdDSA", "kid": ..., "typ": ...}``. CMP receipts arrive signed with whatever
the CMP uses (RS256, ES256, EdDSA, ...) and are verified with ``joserfc`` against the JWKS the
tenant registered. Errors say "could not verify", nothing more.
"""

from __future__ import annotations

import base64
import json
import warnings
from dataclasses import dataclass
from typing import Any

from joserfc import jws as jose_jws
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from consentgate.crypto import signing
from consentgate.crypto.keystore import KeyStore
from consentgate.encoding import b64url_decode_strict

# Asymmetric algorithms only: a CMP receipt must be checkable by anyone holding the JWKS.
CMP_ALGORITHMS = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
    "EdDSA", "Ed25519",
]  # fmt: skip


class JwsError(ValueError):
    """A JWS could not be parsed or verified."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    try:
        return b64url_decode_strict(text)
    except ValueError:
        raise JwsError("not canonical base64url") from None


def _json_segment(data: dict[str, Any]) -> str:
    return _b64url(json.dumps(data, separators=(",", ":"), sort_keys=True).encode())


def sign_compact(keystore: KeyStore, tenant: str, claims: dict[str, Any], typ: str) -> str:
    """EdDSA-sign ``claims`` under the tenant's current key; the header names its kid."""
    for _ in range(3):  # a rotation between reading the kid and signing: sign again
        current = [k for k in keystore.signing_keys(tenant) if k.retired_at is None][-1]
        header = {"alg": "EdDSA", "kid": current.kid, "typ": typ}
        signing_input = f"{_json_segment(header)}.{_json_segment(claims)}"
        sig = keystore.sign(tenant, signing_input.encode("ascii"))
        if sig.kid == current.kid:
            return f"{signing_input}.{_b64url(sig.signature)}"
    raise JwsError("the signing key kept changing while signing")


@dataclass(frozen=True, slots=True)
class Verified:
    header: dict[str, Any]
    claims: dict[str, Any]


def split_compact(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """(header, claims, signing input, signature) without verifying anything."""
    parts = token.split(".") if isinstance(token, str) else []
    if len(parts) != 3:
        raise JwsError("not a compact JWS")
    try:
        header = json.loads(_unb64url(parts[0]))
        claims = json.loads(_unb64url(parts[1]))
    except (ValueError, UnicodeDecodeError, RecursionError):  # (binascii.Error is a ValueError)
        raise JwsError("JWS header or payload is not JSON") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise JwsError("JWS header and payload must be JSON objects")
    return header, claims, f"{parts[0]}.{parts[1]}".encode("ascii"), _unb64url(parts[2])


def verify_eddsa(token: str, jwks: dict[str, Any]) -> Verified:
    """Verify one of consentgate's own tokens against a JWKS (offline: no key store)."""
    header, claims, signing_input, signature = split_compact(token)
    if header.get("alg") != "EdDSA":
        raise JwsError("unexpected JWS algorithm")
    for key in jwks.get("keys", []):
        if key.get("kid") == header.get("kid") and key.get("crv") == "Ed25519":
            public = _unb64url(str(key.get("x", "")))
            if signing.verify(public, signature, signing_input):
                return Verified(header, claims)
            raise JwsError("could not verify the JWS signature")
    raise JwsError("the JWS kid is not in the JWKS")


def verify_with_jwks(token: str, jwks: dict[str, Any]) -> Verified:
    """Verify a CMP's JWS (any algorithm its JWKS supports) with joserfc."""
    try:
        key_set = KeySet.import_key_set(jwks)  # type: ignore[arg-type]
        with warnings.catch_warnings():
            # "EdDSA" is deprecated by RFC 9864 in favour of "Ed25519"; CMPs still use it.
            warnings.simplefilter("ignore")
            obj = jose_jws.deserialize_compact(token, key_set, algorithms=CMP_ALGORITHMS)
    except (JoseError, ValueError, TypeError, KeyError):
        raise JwsError("could not verify the receipt") from None
    try:
        claims = json.loads(obj.payload)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise JwsError("receipt payload is not JSON") from None
    if not isinstance(claims, dict):
        raise JwsError("receipt payload must be a JSON object")
    return Verified(dict(obj.protected), claims)
