"""The app-layer envelope: a message HPKE-sealed to a device key and signed by the tenant.

This module owns the envelope's wire format, its two pinned suites, the ``info`` that binds
the ciphertext to (tenant, message, template, expiry), the signature input, the order in
which an envelope is checked, and the device key forms (JWK in, key objects out). Sealing is
RFC 9180 single-shot base mode through ``cryptography``'s ``hpke.Suite``; the tenant's
Ed25519 signature comes from a callable so the key store keeps the private key. Opening fails
one way only, ``EnvelopeError("could not open envelope")``, with a non-secret ``reason`` for
logs. docs/envelope.md is the specification.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias, TypeGuard

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey, MLKEM768PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from consentgate.encoding import b64url_decode_strict

__all__ = [
    "HYBRID_JWK_ALG",
    "SUITES",
    "SUITE_MLKEM768_X25519",
    "SUITE_X25519",
    "DeviceKeyError",
    "DevicePublicKey",
    "EnvelopeError",
    "RecipientKeyPair",
    "device_public_key",
    "envelope_info",
    "generate_recipient_key",
    "open_envelope",
    "parse_device_jwk",
    "recipient_key_from_seed",
    "seal",
]

SUITE_X25519: Final = "X25519-SHA256-CHACHA20POLY1305"
SUITE_MLKEM768_X25519: Final = "MLKEM768X25519-SHA256-CHACHA20POLY1305"
SUITES: Final = (SUITE_X25519, SUITE_MLKEM768_X25519)

#: The JWK ``alg`` of a hybrid device key. It names the KEM (draft-ietf-hpke-pq, KEM 0x647A,
#: a.k.a. X-Wing) rather than a JOSE algorithm: JOSE's HPKE-11 pins SHAKE256 as the KDF,
#: and this suite uses HKDF-SHA256.
HYBRID_JWK_ALG: Final = "MLKEM768-X25519"
# JOSE HPKE (draft-ietf-jose-hpke-encrypt) calls exactly this X25519 suite "HPKE-4"; a device
# library that writes that alg on its key is saying the same thing we are.
_X25519_JWK_ALGS: Final = (None, "HPKE-4")

VERSION: Final = 1
MESSAGE: Final = "could not open envelope"

_WIRE_FIELDS: Final = frozenset({"v", "suite", "kid", "enc", "ct", "info", "exp", "sig"})
_INFO_FIELDS: Final = frozenset({"v", "tenant", "message_id", "template_id", "exp"})
_PLAINTEXT_FIELDS: Final = frozenset({"text", "rich_card"})
_MAX_ID: Final = 256
_MAX_EXP: Final = 2**53 - 1  # the integers RFC 8785 (I-JSON) writes exactly
_SEED_LENGTH: Final = 32
_MLKEM768_PUBLIC_LENGTH: Final = 1184
_X25519_LENGTH: Final = 32
_TAG_LENGTH: Final = 16

RecipientPublicKey: TypeAlias = X25519PublicKey | hpke.MLKEM768X25519PublicKey
RecipientPrivateKey: TypeAlias = X25519PrivateKey | hpke.MLKEM768X25519PrivateKey
Signer: TypeAlias = Callable[[bytes], bytes]


@dataclass(frozen=True, slots=True)
class _Suite:
    name: str
    hpke: hpke.Suite
    enc_length: int  # Nenc: single-shot HPKE returns enc || ct, this is where to cut
    public_length: int  # Npk
    private_type: type


def _make_suite(name: str, kem: hpke.KEM, public_length: int, private_type: type) -> _Suite:
    suite = hpke.Suite(kem, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
    return _Suite(name, suite, kem.enc_length(), public_length, private_type)


_SUITES: Final = {
    SUITE_X25519: _make_suite(SUITE_X25519, hpke.KEM.X25519, 32, X25519PrivateKey),
    SUITE_MLKEM768_X25519: _make_suite(
        SUITE_MLKEM768_X25519,
        hpke.KEM.MLKEM768_X25519,
        _MLKEM768_PUBLIC_LENGTH + _X25519_LENGTH,
        hpke.MLKEM768X25519PrivateKey,
    ),
}


# -- errors ---------------------------------------------------------------------------------
class EnvelopeError(Exception):
    """An envelope could not be opened. The message never varies; ``reason`` (a short fixed
    code such as ``bad-signature`` or ``expired``) is for logs and is never shown to users."""

    def __init__(self, reason: str) -> None:
        super().__init__(MESSAGE)
        self.reason = reason


class DeviceKeyError(ValueError):
    """A device's public key is unusable. ``field`` names the JWK member at fault (for 422s)."""

    def __init__(self, detail: str, *, field: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


# -- shared byte forms ----------------------------------------------------------------------
def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


# Built once: json.dumps with non-default options builds an encoder on every call, and seal
# serialises three times.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"))
_COMPACT_UTF8 = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _canonical(document: Mapping[str, object]) -> bytes:
    # Every value that reaches here is printable ASCII or an integer below 2**53: for those,
    # sorted keys and no whitespace is exactly RFC 8785 (JCS), without a dependency. This is
    # json.dumps(document, sort_keys=True, separators=(",", ":")).
    return _CANONICAL.encode(document).encode("ascii")


def _is_id(value: object) -> TypeGuard[str]:
    return (
        isinstance(value, str)
        and 0 < len(value) <= _MAX_ID
        and value.isascii()
        and value.isprintable()
    )


def _is_exp(value: object) -> bool:
    # type() rather than isinstance(): True is an int, and json.dumps writes it as "true".
    return type(value) is int and 0 <= value <= _MAX_EXP


def _require_id(value: object, name: str) -> str:
    if not _is_id(value):
        raise ValueError(f"{name} must be 1-{_MAX_ID} printable ASCII characters")
    return value


def _suite(name: object) -> _Suite:
    spec = _SUITES.get(name) if isinstance(name, str) else None
    if spec is None:
        raise ValueError(f"unknown suite {name!r}; expected one of {', '.join(SUITES)}")
    return spec


def envelope_info(*, tenant: str, message_id: str, template_id: str, exp: int) -> bytes:
    """The HPKE ``info``: canonical JSON of {"v", "tenant", "message_id", "template_id",
    "exp"}. Ids are printable ASCII (they travel in clear: never personal data)."""
    for name, value in (
        ("tenant", tenant),
        ("message_id", message_id),
        ("template_id", template_id),
    ):
        _require_id(value, name)
    if not _is_exp(exp):
        raise ValueError(f"exp must be an integer number of Unix seconds in [0, {_MAX_EXP}]")
    return _canonical(
        {
            "v": VERSION,
            "tenant": tenant,
            "message_id": message_id,
            "template_id": template_id,
            "exp": exp,
        }
    )


# -- device keys: public side ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DevicePublicKey:
    """A device's registered encryption key: its suite, kid, raw bytes and key object."""

    suite: str
    kid: str
    public_bytes: bytes = field(repr=False)
    key: RecipientPublicKey = field(repr=False, compare=False)

    def jwk(self) -> dict[str, str]:
        """The public JWK (what a device POSTs to /v1/devices as ``app_key``)."""
        return {**_thumbprint_members(self.suite, self.public_bytes), "kid": self.kid}


def _thumbprint_members(suite: str, public_bytes: bytes) -> dict[str, str]:
    # The RFC 7638 required members: crv/kty/x for OKP, alg/kty/pub for AKP (RFC 9964 §6).
    if suite == SUITE_X25519:
        return {"kty": "OKP", "crv": "X25519", "x": _b64url(public_bytes)}
    return {"kty": "AKP", "alg": HYBRID_JWK_ALG, "pub": _b64url(public_bytes)}


def _thumbprint(suite: str, public_bytes: bytes) -> str:
    digest = hashlib.sha256(_canonical(_thumbprint_members(suite, public_bytes))).digest()
    return _b64url(digest)


def _public_key(suite: str, raw: bytes, *, where: str, check_order: bool) -> RecipientPublicKey:
    x25519_raw = raw if suite == SUITE_X25519 else raw[_MLKEM768_PUBLIC_LENGTH:]
    x25519 = X25519PublicKey.from_public_bytes(x25519_raw)
    if check_order:
        try:
            # A low-order point makes every shared secret zero: HPKE would refuse to seal to
            # it on every send. One throwaway DH finds that out at registration instead.
            X25519PrivateKey.generate().exchange(x25519)
        except ValueError:
            raise DeviceKeyError(f"{where} is a low-order X25519 point", field=where) from None
    if suite == SUITE_X25519:
        return x25519
    try:
        mlkem = MLKEM768PublicKey.from_public_bytes(raw[:_MLKEM768_PUBLIC_LENGTH])
    except ValueError:
        raise DeviceKeyError(
            f"{where} does not start with a valid ML-KEM-768 public key", field=where
        ) from None
    return hpke.MLKEM768X25519PublicKey(mlkem, x25519)


def _check_length(spec: _Suite, raw: object, where: str) -> bytes:
    if not isinstance(raw, bytes) or len(raw) != spec.public_length:
        got = len(raw) if isinstance(raw, bytes) else type(raw).__name__
        raise DeviceKeyError(
            f"{where} must decode to {spec.public_length} bytes for {spec.name}, got {got}",
            field=where,
        )
    return raw


def device_public_key(suite: str, public_bytes: bytes, kid: str | None = None) -> DevicePublicKey:
    """Validate raw public key bytes for ``suite`` (length, ML-KEM encoding, no low-order
    X25519 point); ``kid`` defaults to the RFC 7638 thumbprint of the key's JWK."""
    spec = _suite(suite)
    where = "app_key.x" if suite == SUITE_X25519 else "app_key.pub"
    public_bytes = _check_length(spec, public_bytes, where)
    key = _public_key(suite, public_bytes, where=where, check_order=True)
    if kid is None:
        kid = _thumbprint(suite, public_bytes)
    elif not _is_id(kid):
        raise DeviceKeyError(
            f"app_key.kid must be 1-{_MAX_ID} printable ASCII characters", field="app_key.kid"
        )
    return DevicePublicKey(suite, kid, public_bytes, key)


def _jwk_bytes(jwk: Mapping[str, Any], member: str) -> bytes:
    value = jwk.get(member)
    if not isinstance(value, str):
        raise DeviceKeyError(f"app_key.{member} is required (base64url)", field=f"app_key.{member}")
    try:
        return b64url_decode_strict(value)
    except ValueError as exc:
        raise DeviceKeyError(f"app_key.{member} is {exc}", field=f"app_key.{member}") from None


def parse_device_jwk(jwk: object) -> DevicePublicKey:
    """A device's registered public JWK → its suite and key, or :class:`DeviceKeyError`.

    * X25519: ``{"kty": "OKP", "crv": "X25519", "x": b64url(32 bytes), "kid"?}``
      (``alg``, if present, must be ``HPKE-4``: JOSE's name for this same suite).
    * ML-KEM-768 + X25519: ``{"kty": "AKP", "alg": "MLKEM768-X25519",
      "pub": b64url(1216 bytes: ML-KEM-768 public key || X25519 public key), "kid"?}``.

    ``use``, if present, must be ``enc``. A JWK holding private material (``d``, ``priv``)
    is refused outright: that key has left the device and must be replaced.
    """
    if not isinstance(jwk, Mapping):
        raise DeviceKeyError("app_key must be a JSON object (a public JWK)", field="app_key")
    for private in ("d", "priv"):
        if private in jwk:
            raise DeviceKeyError(
                f"app_key carries private key material ({private!r}): send the public key "
                "only, and generate a new key pair, this one is exposed",
                field=f"app_key.{private}",
            )
    if jwk.get("use", "enc") != "enc":
        raise DeviceKeyError("app_key.use must be 'enc'", field="app_key.use")
    kid = jwk.get("kid")
    if kid is not None and not _is_id(kid):
        raise DeviceKeyError(
            f"app_key.kid must be 1-{_MAX_ID} printable ASCII characters", field="app_key.kid"
        )
    kty = jwk.get("kty")
    if kty == "OKP":
        if jwk.get("crv") != "X25519":
            raise DeviceKeyError(
                f"app_key.crv must be 'X25519' (an encryption key), got {jwk.get('crv')!r}",
                field="app_key.crv",
            )
        if jwk.get("alg") not in _X25519_JWK_ALGS:
            raise DeviceKeyError(
                f"app_key.alg must be absent or 'HPKE-4', got {jwk.get('alg')!r}",
                field="app_key.alg",
            )
        return device_public_key(SUITE_X25519, _jwk_bytes(jwk, "x"), kid)
    if kty == "AKP":
        if jwk.get("alg") != HYBRID_JWK_ALG:
            raise DeviceKeyError(
                f"app_key.alg must be {HYBRID_JWK_ALG!r} for an AKP key, got {jwk.get('alg')!r}",
                field="app_key.alg",
            )
        return device_public_key(SUITE_MLKEM768_X25519, _jwk_bytes(jwk, "pub"), kid)
    raise DeviceKeyError(
        f"app_key.kty must be 'OKP' (X25519) or 'AKP' ({HYBRID_JWK_ALG}), got {kty!r}",
        field="app_key.kty",
    )


# -- device keys: private side --------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RecipientKeyPair:
    """A device's decryption key. ``seed`` (32 bytes) is all that needs storing: the X25519
    private key itself, or for the hybrid suite the X-Wing seed the two halves expand from."""

    suite: str
    seed: bytes = field(repr=False)
    private_key: RecipientPrivateKey = field(repr=False, compare=False)
    public: DevicePublicKey


def recipient_key_from_seed(suite: str, seed: bytes, kid: str | None = None) -> RecipientKeyPair:
    """Rebuild a key pair from its 32-byte seed.

    The hybrid expansion is X-Wing's (draft-connolly-cfrg-xwing-kem, as used by
    draft-ietf-hpke-pq): SHAKE256(seed, 96) = ML-KEM-768 seed (d || z, 64 bytes) || X25519
    private key (32 bytes). The test suite checks it against draft-ietf-hpke-pq's vector.
    """
    _suite(suite)
    if not isinstance(seed, bytes) or len(seed) != _SEED_LENGTH:
        raise ValueError(f"a device key seed is {_SEED_LENGTH} bytes")
    private_key: RecipientPrivateKey
    if suite == SUITE_X25519:
        private_key = X25519PrivateKey.from_private_bytes(seed)
        public_bytes = private_key.public_key().public_bytes_raw()
    else:
        expanded = hashlib.shake_256(seed).digest(96)
        mlkem = MLKEM768PrivateKey.from_seed_bytes(expanded[:64])
        x25519 = X25519PrivateKey.from_private_bytes(expanded[64:])
        private_key = hpke.MLKEM768X25519PrivateKey(mlkem, x25519)
        # The hybrid key objects have no byte accessors: the public key is its halves' bytes.
        public_bytes = (
            mlkem.public_key().public_bytes_raw() + x25519.public_key().public_bytes_raw()
        )
    return RecipientKeyPair(suite, seed, private_key, device_public_key(suite, public_bytes, kid))


def generate_recipient_key(suite: str, kid: str | None = None) -> RecipientKeyPair:
    return recipient_key_from_seed(suite, os.urandom(_SEED_LENGTH), kid)


# -- sealing --------------------------------------------------------------------------------
def _recipient(
    spec: _Suite, recipient_public: bytes | RecipientPublicKey | DevicePublicKey
) -> RecipientPublicKey:
    if isinstance(recipient_public, DevicePublicKey):
        if recipient_public.suite != spec.name:
            raise ValueError(f"the device key is for {recipient_public.suite}, not {spec.name}")
        return recipient_public.key
    if isinstance(recipient_public, bytes):
        # No low-order check here: HPKE itself refuses a zero shared secret, and this is the
        # hot path.
        raw = _check_length(spec, recipient_public, "recipient_public")
        return _public_key(spec.name, raw, where="recipient_public", check_order=False)
    wanted = X25519PublicKey if spec.name == SUITE_X25519 else hpke.MLKEM768X25519PublicKey
    if not isinstance(recipient_public, wanted):
        raise TypeError(f"{spec.name} needs a {wanted.__name__}")
    return recipient_public


def _plaintext_bytes(plaintext: Mapping[str, Any]) -> bytes:
    if not isinstance(plaintext, Mapping) or not isinstance(plaintext.get("text"), str):
        raise ValueError('plaintext must be {"text": str, "rich_card"?: object}')
    if not plaintext.keys() <= _PLAINTEXT_FIELDS:
        raise ValueError(
            f"plaintext has unknown fields {sorted(plaintext.keys() - _PLAINTEXT_FIELDS)}"
        )
    if "rich_card" in plaintext and not isinstance(plaintext["rich_card"], Mapping):
        raise ValueError("plaintext rich_card must be a JSON object")
    return _COMPACT_UTF8.encode(plaintext).encode("utf-8")


def seal(
    plaintext: Mapping[str, Any],
    *,
    recipient_public: bytes | RecipientPublicKey | DevicePublicKey,
    suite: str,
    kid: str,
    tenant: str,
    message_id: str,
    template_id: str,
    exp: int,
    sign: Signer,
) -> dict[str, Any]:
    """Seal ``plaintext`` ({"text", "rich_card"?}) to a device and sign it for the tenant.

    ``recipient_public``: raw public key bytes, a key object, or a :class:`DevicePublicKey`
    (parse once and reuse: loading a hybrid key from bytes costs more than all of
    ``seal``'s own work around the HPKE call).
    ``sign(data) -> 64-byte Ed25519 signature`` under the tenant's current key.
    Bad arguments raise ``ValueError``/``TypeError``; nothing here is secret.
    """
    spec = _suite(suite)
    public = _recipient(spec, recipient_public)
    _require_id(kid, "kid")
    info = envelope_info(tenant=tenant, message_id=message_id, template_id=template_id, exp=exp)
    sealed = spec.hpke.encrypt(_plaintext_bytes(plaintext), public, info=info)
    envelope: dict[str, Any] = {
        "v": VERSION,
        "suite": suite,
        "kid": kid,
        "enc": _b64url(sealed[: spec.enc_length]),
        "ct": _b64url(sealed[spec.enc_length :]),
        "info": _b64url(info),
        "exp": exp,
    }
    signature = sign(_canonical(envelope))
    if not isinstance(signature, bytes) or len(signature) != 64:
        raise ValueError("the signer must return a 64-byte Ed25519 signature")
    envelope["sig"] = _b64url(signature)
    return envelope


# -- opening --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Wire:
    spec: _Suite
    kid: str
    enc: bytes
    ct: bytes
    info: bytes
    exp: int
    sig: bytes
    signed: bytes  # the signature input: canonical JSON of the envelope without "sig"


def _wire(envelope: object) -> _Wire:
    """Shape only: exact members, types, strict base64url, lengths. Nothing is trusted yet."""
    if not isinstance(envelope, Mapping) or envelope.keys() != _WIRE_FIELDS:
        raise EnvelopeError("malformed")
    if type(envelope["v"]) is not int or envelope["v"] != VERSION:
        raise EnvelopeError("unknown-version")
    spec = _SUITES.get(envelope["suite"]) if isinstance(envelope["suite"], str) else None
    if spec is None:
        raise EnvelopeError("unknown-suite")
    if not _is_id(envelope["kid"]) or not _is_exp(envelope["exp"]):
        raise EnvelopeError("malformed")
    try:
        enc, ct, info, sig = (
            b64url_decode_strict(envelope[name]) for name in ("enc", "ct", "info", "sig")
        )
    except ValueError:
        raise EnvelopeError("malformed") from None
    if len(enc) != spec.enc_length or len(ct) < _TAG_LENGTH or len(sig) != 64:
        raise EnvelopeError("malformed")
    signed = _canonical({name: envelope[name] for name in _WIRE_FIELDS - {"sig"}})
    return _Wire(spec, envelope["kid"], enc, ct, info, envelope["exp"], sig, signed)


def _verify_signature(wire: _Wire, tenant_public_keys: Sequence[bytes]) -> None:
    # No signing-key id on the wire: try the tenant's keys (current and retired, a handful).
    for public in tenant_public_keys:
        try:
            Ed25519PublicKey.from_public_bytes(public).verify(wire.sig, wire.signed)
        except (InvalidSignature, ValueError, TypeError):
            continue
        return
    raise EnvelopeError("bad-signature")


def _check_info(wire: _Wire, expect_tenant: str | None) -> None:
    try:
        info = json.loads(wire.info.decode("ascii"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise EnvelopeError("info-mismatch") from None
    if (
        not isinstance(info, dict)
        or info.keys() != _INFO_FIELDS
        or type(info["v"]) is not int
        or info["v"] != VERSION
        or not all(_is_id(info[name]) for name in ("tenant", "message_id", "template_id"))
        or not _is_exp(info["exp"])
        or info["exp"] != wire.exp
        # Exactly one byte string per meaning: no reordering, spacing or duplicate members.
        or _canonical(info) != wire.info
    ):
        raise EnvelopeError("info-mismatch")
    if expect_tenant is not None and info["tenant"] != expect_tenant:
        raise EnvelopeError("tenant-mismatch")


def _plaintext(data: bytes) -> dict[str, Any]:
    try:
        plaintext = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise EnvelopeError("bad-plaintext") from None
    if (
        not isinstance(plaintext, dict)
        or not isinstance(plaintext.get("text"), str)
        or not plaintext.keys() <= _PLAINTEXT_FIELDS
        or ("rich_card" in plaintext and not isinstance(plaintext["rich_card"], dict))
    ):
        raise EnvelopeError("bad-plaintext")
    return plaintext


def open_envelope(
    envelope: Mapping[str, Any],
    *,
    private_key: RecipientPrivateKey,
    tenant_public_keys: Sequence[bytes],
    now: int,
    expect_tenant: str | None = None,
    expect_kid: str | None = None,
) -> dict[str, Any]:
    """Check and decrypt an envelope; return its plaintext {"text", "rich_card"?}.

    Order: shape → tenant signature (any of ``tenant_public_keys``, raw Ed25519, current and
    retired) → expiry (``now < exp``) → ``info`` is canonical and agrees with the envelope
    (``exp``; ``tenant`` if ``expect_tenant``; ``kid`` if ``expect_kid``) → HPKE open with
    ``info``. Every failure raises ``EnvelopeError("could not open envelope")``.
    """
    try:
        wire = _wire(envelope)
        _verify_signature(wire, tenant_public_keys)
        if now >= wire.exp:
            raise EnvelopeError("expired")
        _check_info(wire, expect_tenant)
        if expect_kid is not None and wire.kid != expect_kid:
            raise EnvelopeError("kid-mismatch")
        if not isinstance(private_key, wire.spec.private_type):
            raise EnvelopeError("wrong-key-type")
        try:
            data = wire.spec.hpke.decrypt(wire.enc + wire.ct, private_key, info=wire.info)
        except (InvalidTag, ValueError, TypeError):
            raise EnvelopeError("decrypt-failed") from None
        return _plaintext(data)
    except EnvelopeError:
        raise
    except (ValueError, TypeError, KeyError, RecursionError):
        # Belt and braces: whatever slipped past the checks above still fails one way.
        raise EnvelopeError("malformed") from None
