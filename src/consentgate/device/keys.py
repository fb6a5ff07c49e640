"""A device's envelope key pair: generate, persist locally, publish the public half, open.

The private half is a 32-byte seed (see ``crypto.envelope.recipient_key_from_seed``) that
never leaves the device: :meth:`DeviceKeys.public_jwk` is the only form meant for the network,
and the file written by :meth:`DeviceKeys.save` is created with mode 0600 and refused on load
if others can read it (the way ssh treats private keys).
"""

from __future__ import annotations

import base64
import json
import os
import stat
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from consentgate.crypto.envelope import (
    SUITE_X25519,
    SUITES,
    DevicePublicKey,
    EnvelopeError,
    RecipientKeyPair,
    generate_recipient_key,
    open_envelope,
    recipient_key_from_seed,
)
from consentgate.encoding import b64url_decode_strict

_FORMAT = "consentgate-device-key"
_FORMAT_VERSION = 1


class DeviceKeysError(ValueError):
    """Stored device keys could not be read (corrupt, unknown suite, or unsafe permissions)."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def tenant_signing_keys(tenant_jwks: Mapping[str, Any]) -> list[bytes]:
    """The raw Ed25519 keys of a tenant JWKS (``/v1/tenants/{tenant}/jwks.json``), retired
    ones included. Entries that are not Ed25519 signing keys are skipped."""
    keys = tenant_jwks.get("keys") if isinstance(tenant_jwks, Mapping) else None
    if not isinstance(keys, Sequence) or isinstance(keys, str | bytes):
        return []
    found = []
    for jwk in keys:
        if (
            not isinstance(jwk, Mapping)
            or jwk.get("kty") != "OKP"
            or jwk.get("crv") != "Ed25519"
            or jwk.get("use", "sig") != "sig"
            or not isinstance(jwk.get("x"), str)
        ):
            continue
        try:
            raw = b64url_decode_strict(jwk["x"])
        except ValueError:
            continue
        if len(raw) == 32:
            found.append(raw)
    return found


class DeviceKeys:
    """The device's decryption key and its public JWK."""

    __slots__ = ("_pair",)

    def __init__(self, pair: RecipientKeyPair) -> None:
        self._pair = pair

    @classmethod
    def generate(cls, suite: str = SUITE_X25519, kid: str | None = None) -> DeviceKeys:
        """A new key pair for ``suite`` (``SUITE_X25519`` or ``SUITE_MLKEM768_X25519``);
        ``kid`` defaults to the RFC 7638 thumbprint of the public JWK."""
        return cls(generate_recipient_key(suite, kid))

    @property
    def suite(self) -> str:
        return self._pair.suite

    @property
    def kid(self) -> str:
        return self._pair.public.kid

    @property
    def public_key(self) -> DevicePublicKey:
        return self._pair.public

    def public_jwk(self) -> dict[str, str]:
        """What to POST to /v1/devices as ``app_key``: public members and ``kid`` only."""
        return self._pair.public.jwk()

    def __repr__(self) -> str:
        return f"DeviceKeys(suite={self.suite!r}, kid={self.kid!r})"

    # -- persistence (private key material: keep it on the device) ----------------------------
    def to_bytes(self) -> bytes:
        """The private key as JSON bytes. Treat them like the key itself."""
        document = {
            "format": _FORMAT,
            "v": _FORMAT_VERSION,
            "suite": self.suite,
            "kid": self.kid,
            "seed": _b64url(self._pair.seed),
        }
        return json.dumps(document, sort_keys=True, separators=(",", ":")).encode("ascii")

    @classmethod
    def from_bytes(cls, data: bytes) -> DeviceKeys:
        try:
            document = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise DeviceKeysError("not a consentgate device key file") from None
        if (
            not isinstance(document, dict)
            or document.get("format") != _FORMAT
            or document.get("v") != _FORMAT_VERSION
        ):
            raise DeviceKeysError("not a consentgate device key file (format v1)")
        if document.get("suite") not in SUITES:
            raise DeviceKeysError(f"unknown suite {document.get('suite')!r}")
        try:
            seed = b64url_decode_strict(str(document.get("seed", "")))
            pair = recipient_key_from_seed(document["suite"], seed, document.get("kid"))
        except ValueError as exc:
            raise DeviceKeysError(f"corrupt device key: {exc}") from None
        return cls(pair)

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write the private key to ``path`` (mode 0600) atomically; an existing file is
        replaced only with ``overwrite=True``, since a lost key cannot open its messages."""
        target = Path(path)
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)  # exactly 0600, whatever the umask
            with os.fdopen(fd, "wb") as fh:
                fh.write(self.to_bytes())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DeviceKeys:
        target = Path(path)
        if os.name == "posix":
            mode = stat.S_IMODE(target.stat().st_mode)
            if mode & 0o077:
                raise DeviceKeysError(
                    f"{target} is accessible to other users (mode {mode:04o}); "
                    "run chmod 600 on it, and replace the key if it may have been read"
                )
        return cls.from_bytes(target.read_bytes())

    # -- receiving ---------------------------------------------------------------------------
    def open(
        self,
        envelope: Mapping[str, Any],
        tenant_jwks: Mapping[str, Any],
        now: int | None = None,
        *,
        tenant: str | None = None,
    ) -> dict[str, Any]:
        """Verify and decrypt an envelope addressed to this device.

        ``tenant_jwks`` is the sending tenant's JWKS as served at
        ``/v1/tenants/{tenant}/jwks.json``; ``tenant``, if given, must be the tenant bound
        in the envelope. Raises ``EnvelopeError("could not open envelope")`` on any failure.
        """
        tenant_keys = tenant_signing_keys(tenant_jwks)
        if not tenant_keys:
            raise EnvelopeError("no-tenant-keys")
        return open_envelope(
            envelope,
            private_key=self._pair.private_key,
            tenant_public_keys=tenant_keys,
            now=int(time.time()) if now is None else now,
            expect_tenant=tenant,
            expect_kid=self.kid,
        )
