"""The key store: per-tenant salts (versioned), Ed25519 signing keys (kid) and named secrets.

Callers never see salt or private-key bytes: they ask the store to *use* them
(:meth:`KeyStore.keyed_hash`, :meth:`KeyStore.sign`). That is the shape a PKCS#11 store
(SoftHSM2, a cloud HSM) can implement with non-extractable keys: an HMAC key object per salt
version and an EdDSA key object per kid. The local store keeps each secret wrapped with
AES-256-GCM under a master key, bound by associated data to (tenant, kind, id) so entries
cannot be swapped between tenants or roles.
"""

from __future__ import annotations

import base64
import fcntl
import hmac
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from hashlib import sha256
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.hmac import HMAC

from consentgate.crypto import signing
from consentgate.errors import KeyStoreError, NotFound

_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


class KeyKind(StrEnum):
    SALT = "salt"
    SIGNING = "signing"
    WEBHOOK = "webhook"
    JOIN = "join"  # analytics join keys: one per calendar month, id ``YYYY-MM``


@dataclass(frozen=True, slots=True)
class PublicSigningKey:
    kid: str
    public_key: bytes
    created_at: str
    retired_at: str | None


@dataclass(frozen=True, slots=True)
class Signature:
    kid: str
    public_key: bytes
    signature: bytes


class KeyStore(Protocol):
    """What the rest of consentgate may ask of a key store."""

    def create_tenant(self, tenant: str) -> str:
        """Create salt v1, a signing key and a webhook secret; return the webhook secret
        (``whsec_<base64>``), the only time it is ever shown."""
        ...

    def has_tenant(self, tenant: str) -> bool: ...

    def salt_versions(self, tenant: str) -> list[int]:
        """Every salt version, oldest first; the last is current."""
        ...

    def keyed_hash(self, tenant: str, salt_version: int, data: bytes) -> bytes:
        """HMAC-SHA256 under the tenant's salt of that version."""
        ...

    def keyed_hash_many(
        self, tenant: str, salt_version: int, items: Iterable[bytes]
    ) -> list[bytes]:
        """:meth:`keyed_hash` of each item, in order: the salt is looked up once (an HSM
        would open one HMAC operation per batch instead of one per item)."""
        ...

    def sign(self, tenant: str, data: bytes) -> Signature:
        """Ed25519 signature under the tenant's current signing key."""
        ...

    def signing_keys(self, tenant: str) -> list[PublicSigningKey]:
        """Every signing key ever used, retired ones included, oldest first."""
        ...

    def webhook_mac(self, tenant: str, data: bytes) -> list[bytes]:
        """HMAC-SHA256 of ``data`` under each live webhook secret (newest first)."""
        ...

    def rotate(self, tenant: str, kind: KeyKind) -> str:
        """Add a new current key of ``kind``; return its version or kid."""
        ...

    def join_macs(self, tenant: str, month: str, items: Sequence[bytes]) -> list[bytes]:
        """HMAC-SHA256 of each item under the tenant's join key for ``month`` (``YYYY-MM``),
        created on first use. Each calendar month has its own random key, so tokens of
        different months cannot be linked; the keys never leave the store."""
        ...

    def wrap_data_key(self, tenant: str, key: bytes, context: str) -> bytes:
        """Wrap a data key (e.g. one message's) so only this store can unwrap it."""
        ...

    def unwrap_data_key(self, tenant: str, wrapped: bytes, context: str) -> bytes: ...


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _load_master_key(key_dir: Path, configured: str | None) -> bytes:
    if configured:
        try:
            key = base64.b64decode(configured, validate=True)
        except ValueError:
            raise KeyStoreError("CONSENTGATE_MASTER_KEY is not valid base64") from None
        if len(key) != 32:
            raise KeyStoreError("CONSENTGATE_MASTER_KEY must decode to 32 bytes")
        return key
    path = key_dir / "master.key"
    key_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(key_dir, 0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = base64.b64decode(path.read_bytes().strip())
        if len(key) != 32:
            raise KeyStoreError(f"{path} does not hold a 32-byte key") from None
        return key
    key = AESGCM.generate_key(bit_length=256)
    with os.fdopen(fd, "wb") as fh:
        fh.write(base64.b64encode(key) + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
    return key


class LocalKeyStore:
    """Wrapped secrets in one JSON file per tenant under ``key_dir/tenants``.

    Files are replaced atomically under an exclusive lock; readers notice a rotation made by
    another process (the CLI) through the file's modification time.
    """

    def __init__(
        self, key_dir: Path, master_key: str | None = None, refresh_seconds: float = 1.0
    ) -> None:
        """``refresh_seconds``: how often to look for another process's rotation (a stat of
        the tenant's file); this process's own rotations are seen at once."""
        self._dir = key_dir
        self._refresh = refresh_seconds
        self._signers: dict[bytes, Callable[[bytes], bytes]] = {}
        self._checked: dict[str, float] = {}
        self._aead = AESGCM(_load_master_key(key_dir, master_key))
        (key_dir / "tenants").mkdir(parents=True, exist_ok=True)
        self._cache: dict[
            str, tuple[tuple[int, int, int], dict[str, Any], dict[tuple[str, str], bytes]]
        ] = {}
        self._lock = threading.Lock()

    # -- files -------------------------------------------------------------------------------
    def _path(self, tenant: str) -> Path:
        return self._dir / "tenants" / f"{tenant}.json"

    @contextmanager
    def _exclusive(self, tenant: str) -> Iterator[None]:
        lock_path = self._dir / "tenants" / f"{tenant}.lock"
        with open(lock_path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _write(self, tenant: str, doc: dict[str, Any]) -> None:
        path = self._path(tenant)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        self._cache.pop(tenant, None)  # our own change: visible at once

    def _entries(
        self, tenant: str, *, fresh: bool = False
    ) -> tuple[dict[str, Any], dict[tuple[str, str], bytes]]:
        """The tenant's document and its unwrapped secrets, reloaded when the file changed.

        Every write replaces the file (a new inode), so (inode, size, mtime) changes even on
        filesystems with coarse timestamps; ``fresh`` skips the cache altogether."""
        cached = self._cache.get(tenant)
        now = time.monotonic()
        if (
            not fresh
            and cached is not None
            and now - self._checked.get(tenant, 0.0) < self._refresh
        ):
            return cached[1], cached[2]
        path = self._path(tenant)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise NotFound(f"no keys for tenant {tenant!r}") from None
        version = (st.st_ino, st.st_size, st.st_mtime_ns)
        self._checked[tenant] = now
        if not fresh and cached is not None and cached[0] == version:
            return cached[1], cached[2]
        with self._lock:
            doc = json.loads(path.read_text())
            unwrapped = {
                (e["kind"], e["id"]): self._unwrap(tenant, e["kind"], e["id"], e["wrapped"])
                for e in doc["entries"]
            }
            self._cache[tenant] = (version, doc, unwrapped)
        return doc, unwrapped

    # -- wrapping ----------------------------------------------------------------------------
    def _aad(self, tenant: str, kind: str, ident: str) -> bytes:
        return f"consentgate-key\x00{tenant}\x00{kind}\x00{ident}".encode()

    def _wrap(self, tenant: str, kind: str, ident: str, secret: bytes) -> str:
        nonce = secrets.token_bytes(12)
        sealed = self._aead.encrypt(nonce, secret, self._aad(tenant, kind, ident))
        return base64.b64encode(nonce + sealed).decode()

    def _unwrap(self, tenant: str, kind: str, ident: str, wrapped: str) -> bytes:
        raw = base64.b64decode(wrapped)
        try:
            return self._aead.decrypt(raw[:12], raw[12:], self._aad(tenant, kind, ident))
        except InvalidTag:
            raise KeyStoreError(
                f"could not unwrap a {kind} key of tenant {tenant!r}: wrong master key?"
            ) from None

    def _new_entry(self, tenant: str, kind: KeyKind, doc: dict[str, Any]) -> tuple[str, bytes]:
        now = _now()
        for entry in doc["entries"]:
            if entry["kind"] == kind.value and entry["retired_at"] is None:
                entry["retired_at"] = now
        if kind is KeyKind.SIGNING:
            seed, public = signing.generate_signing_key()
            ident, secret = signing.jwk_thumbprint(public), seed
            extra = {"public": base64.b64encode(public).decode()}
        else:
            versions = [int(e["id"]) for e in doc["entries"] if e["kind"] == kind.value]
            ident, secret, extra = str(max(versions, default=0) + 1), secrets.token_bytes(32), {}
        doc["entries"].append(
            {
                "kind": kind.value,
                "id": ident,
                "created_at": now,
                "retired_at": None,
                "wrapped": self._wrap(tenant, kind.value, ident, secret),
                **extra,
            }
        )
        return ident, secret

    # -- KeyStore ----------------------------------------------------------------------------
    def has_tenant(self, tenant: str) -> bool:
        # Key files are never deleted: a tenant whose keys are loaded needs no stat (this
        # runs for every signed webhook).
        return tenant in self._cache or self._path(tenant).exists()

    def create_tenant(self, tenant: str) -> str:
        with self._exclusive(tenant):
            if self._path(tenant).exists():
                raise KeyStoreError(f"keys for tenant {tenant!r} already exist")
            doc: dict[str, Any] = {"tenant": tenant, "format": 1, "entries": []}
            self._new_entry(tenant, KeyKind.SALT, doc)
            self._new_entry(tenant, KeyKind.SIGNING, doc)
            _, webhook = self._new_entry(tenant, KeyKind.WEBHOOK, doc)
            self._write(tenant, doc)
        return "whsec_" + base64.b64encode(webhook).decode()

    def _live(self, tenant: str, kind: KeyKind) -> list[dict[str, Any]]:
        doc, _ = self._entries(tenant)
        return [e for e in doc["entries"] if e["kind"] == kind.value]

    def salt_versions(self, tenant: str) -> list[int]:
        return sorted(int(e["id"]) for e in self._live(tenant, KeyKind.SALT))

    def _salt(self, tenant: str, salt_version: int) -> bytes:
        _, secrets_ = self._entries(tenant)
        salt = secrets_.get((KeyKind.SALT.value, str(salt_version)))
        if salt is None:
            raise KeyStoreError(f"tenant {tenant!r} has no salt version {salt_version}")
        return salt

    def keyed_hash(self, tenant: str, salt_version: int, data: bytes) -> bytes:
        return hmac.new(self._salt(tenant, salt_version), data, sha256).digest()

    def keyed_hash_many(
        self, tenant: str, salt_version: int, items: Iterable[bytes]
    ) -> list[bytes]:
        # One keyed HMAC context, copied per item: the key schedule (the padded-key blocks)
        # is done once, not once per call as with hmac.digest (~3x the time per item).
        keyed = HMAC(self._salt(tenant, salt_version), SHA256()).copy
        out = []
        for item in items:
            h = keyed()
            h.update(item)
            out.append(h.finalize())
        return out

    def _current_signing(self, tenant: str) -> dict[str, Any]:
        current = [e for e in self._live(tenant, KeyKind.SIGNING) if e["retired_at"] is None]
        if not current:
            raise KeyStoreError(f"tenant {tenant!r} has no current signing key")
        return current[-1]

    def sign(self, tenant: str, data: bytes) -> Signature:
        entry = self._current_signing(tenant)
        _, secrets_ = self._entries(tenant)
        seed = secrets_[(KeyKind.SIGNING.value, entry["id"])]
        signer = self._signers.get(seed)
        if signer is None:  # building the key from its seed costs more than signing
            signer = self._signers[seed] = signing.signer(seed)
        return Signature(entry["id"], base64.b64decode(entry["public"]), signer(data))

    def signing_keys(self, tenant: str) -> list[PublicSigningKey]:
        return [
            PublicSigningKey(
                e["id"], base64.b64decode(e["public"]), e["created_at"], e["retired_at"]
            )
            for e in self._live(tenant, KeyKind.SIGNING)
        ]

    def webhook_mac(self, tenant: str, data: bytes) -> list[bytes]:
        _, secrets_ = self._entries(tenant)
        live = [e for e in self._live(tenant, KeyKind.WEBHOOK) if e["retired_at"] is None]
        return [
            hmac.new(secrets_[(KeyKind.WEBHOOK.value, e["id"])], data, sha256).digest()
            for e in reversed(live)
        ]

    def rotate(self, tenant: str, kind: KeyKind) -> str:
        if kind is KeyKind.JOIN:
            raise KeyStoreError("join keys are per calendar month; they are never rotated by hand")
        with self._exclusive(tenant):
            # Re-read under the lock: another process may have rotated since we cached.
            doc, _ = self._entries(tenant, fresh=True)
            doc = json.loads(json.dumps(doc))  # never mutate the cached copy
            ident, _ = self._new_entry(tenant, kind, doc)
            self._write(tenant, doc)
        return ident

    def join_macs(self, tenant: str, month: str, items: Sequence[bytes]) -> list[bytes]:
        if not _MONTH.match(month):
            raise KeyStoreError("a join key month must be YYYY-MM")
        _, secrets_ = self._entries(tenant)
        key = secrets_.get((KeyKind.JOIN.value, month))
        if key is None:
            key = self._create_join_key(tenant, month)
        return [hmac.new(key, item, sha256).digest() for item in items]

    def _create_join_key(self, tenant: str, month: str) -> bytes:
        """The month's join key, created unless another thread or process made it first."""
        with self._exclusive(tenant):
            doc, secrets_ = self._entries(tenant, fresh=True)
            key = secrets_.get((KeyKind.JOIN.value, month))
            if key is not None:
                return key
            doc = json.loads(json.dumps(doc))  # never mutate the cached copy
            key = secrets.token_bytes(32)
            doc["entries"].append(
                {
                    "kind": KeyKind.JOIN.value,
                    "id": month,
                    "created_at": _now(),
                    "retired_at": None,
                    "wrapped": self._wrap(tenant, KeyKind.JOIN.value, month, key),
                }
            )
            self._write(tenant, doc)
        return key

    def wrap_data_key(self, tenant: str, key: bytes, context: str) -> bytes:
        nonce = secrets.token_bytes(12)
        return nonce + self._aead.encrypt(nonce, key, self._aad(tenant, "data-key", context))

    def unwrap_data_key(self, tenant: str, wrapped: bytes, context: str) -> bytes:
        try:
            return self._aead.decrypt(
                wrapped[:12], wrapped[12:], self._aad(tenant, "data-key", context)
            )
        except InvalidTag:
            raise KeyStoreError("could not unwrap a data key") from None
