"""The local key store: wrapped secrets in per-tenant JSON files under a master key."""

from __future__ import annotations

import base64
import hmac
import json
import os
import secrets
import stat
from hashlib import sha256
from pathlib import Path
from typing import Any

import pytest

from consentgate.config import load_settings
from consentgate.crypto import signing
from consentgate.crypto.keystore import KeyKind, LocalKeyStore
from consentgate.errors import KeyStoreError, NotFound

DATA = b"+447911123456"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def tenant_file(key_dir: Path, tenant: str) -> Path:
    return key_dir / "tenants" / f"{tenant}.json"


def backdate(path: Path, seconds: int = 60) -> None:
    """Make the file look written a while ago (as it is when a rotation happens in real
    life), so a rewrite now gets a different mtime on every filesystem."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - seconds * 1_000_000_000))


def unwrapped(store: LocalKeyStore, tenant: str) -> dict[tuple[str, str], bytes]:
    """The store's plaintext secrets (private API: only to check they never reach the disk)."""
    return store._entries(tenant)[1]


@pytest.fixture
def key_dir(tmp_path: Path) -> Path:
    return tmp_path / "keys"


@pytest.fixture
def store(key_dir: Path) -> LocalKeyStore:
    return LocalKeyStore(key_dir, refresh_seconds=0)


def test_generated_master_key_file_is_private(key_dir: Path, store: LocalKeyStore) -> None:
    master = key_dir / "master.key"
    assert master.is_file()
    assert mode(master) == 0o600
    assert mode(key_dir) == 0o700
    assert len(base64.b64decode(master.read_bytes().strip(), validate=True)) == 32
    store.create_tenant("acme")
    assert mode(tenant_file(key_dir, "acme")) == 0o600


def test_existing_master_key_file_is_reused(key_dir: Path, store: LocalKeyStore) -> None:
    before = (key_dir / "master.key").read_bytes()
    store.create_tenant("acme")
    again = LocalKeyStore(key_dir)
    assert (key_dir / "master.key").read_bytes() == before
    assert again.keyed_hash("acme", 1, DATA) == store.keyed_hash("acme", 1, DATA)


def test_master_key_dir_permissions_are_tightened(tmp_path: Path) -> None:
    key_dir = tmp_path / "loose"
    key_dir.mkdir(mode=0o755)
    os.chmod(key_dir, 0o755)  # noqa: S103 - a loose directory the store must tighten
    LocalKeyStore(key_dir)
    assert mode(key_dir) == 0o700


def test_explicit_master_key(key_dir: Path) -> None:
    configured = base64.b64encode(secrets.token_bytes(32)).decode()
    store = LocalKeyStore(key_dir, configured)
    assert not (key_dir / "master.key").exists()
    webhook = store.create_tenant("acme")
    assert webhook.startswith("whsec_")
    assert len(base64.b64decode(webhook.removeprefix("whsec_"))) == 32
    reopened = LocalKeyStore(key_dir, configured)
    assert reopened.keyed_hash("acme", 1, DATA) == store.keyed_hash("acme", 1, DATA)
    # The generated-file master key is a different key: it cannot open these entries.
    with pytest.raises(KeyStoreError):
        LocalKeyStore(key_dir).salt_versions("acme")


def test_master_key_from_the_environment(tmp_path: Path) -> None:
    configured = base64.b64encode(secrets.token_bytes(32)).decode()
    env = {"CONSENTGATE_DATA_DIR": str(tmp_path / "var"), "CONSENTGATE_MASTER_KEY": configured}
    keys = load_settings(env).keys
    assert keys.master_key == configured
    assert keys.key_dir == (tmp_path / "var" / "keys").resolve()
    store = LocalKeyStore(keys.key_dir, keys.master_key)
    store.create_tenant("acme")
    assert not (keys.key_dir / "master.key").exists()
    assert LocalKeyStore(keys.key_dir, configured).salt_versions("acme") == [1]


@pytest.mark.parametrize(
    "configured",
    [
        base64.b64encode(bytes(16)).decode(),
        base64.b64encode(bytes(31)).decode(),
        base64.b64encode(bytes(33)).decode(),
        base64.b64encode(bytes(64)).decode(),
        "not base64 at all!",
        "AAAA=AAAA",
    ],
)
def test_bad_explicit_master_key_rejected(key_dir: Path, configured: str) -> None:
    with pytest.raises(KeyStoreError) as info:
        LocalKeyStore(key_dir, configured)
    assert configured not in str(info.value)


def test_truncated_master_key_file_rejected(key_dir: Path) -> None:
    key_dir.mkdir()
    (key_dir / "master.key").write_bytes(base64.b64encode(bytes(16)) + b"\n")
    with pytest.raises(KeyStoreError):
        LocalKeyStore(key_dir)


def _encodings(secret: bytes) -> list[str]:
    return [
        secret.hex(),
        secret.hex().upper(),
        base64.b64encode(secret).decode(),
        base64.b64encode(secret).decode().rstrip("="),
        base64.urlsafe_b64encode(secret).decode().rstrip("="),
        signing.b64url(secret),
    ]


def test_secrets_on_disk_are_wrapped(key_dir: Path, store: LocalKeyStore) -> None:
    webhook = store.create_tenant("acme")
    store.rotate("acme", KeyKind.SALT)
    store.rotate("acme", KeyKind.SIGNING)
    plain = unwrapped(store, "acme")
    kinds = {kind for kind, _ in plain}
    assert kinds == {"salt", "signing", "webhook"}
    assert len(plain) == 5
    text = tenant_file(key_dir, "acme").read_text()
    raw = tenant_file(key_dir, "acme").read_bytes()
    secrets_ = [*plain.values(), base64.b64decode(webhook.removeprefix("whsec_"))]
    for secret in secrets_:
        assert len(secret) == 32
        assert secret not in raw
        for encoded in _encodings(secret):
            assert encoded not in text
    # Public keys are public: they are stored in the clear (and must match the seeds).
    doc = json.loads(text)
    for entry in doc["entries"]:
        if entry["kind"] == "signing":
            seed = plain[("signing", entry["id"])]
            assert base64.b64decode(entry["public"]) == signing.public_from_seed(seed)


def test_keyed_hash_is_hmac_sha256_under_the_salt(store: LocalKeyStore) -> None:
    store.create_tenant("acme")
    salt = unwrapped(store, "acme")[("salt", "1")]
    assert store.keyed_hash("acme", 1, DATA) == hmac.new(salt, DATA, sha256).digest()


def test_a_different_master_key_cannot_open_the_store(key_dir: Path) -> None:
    first = base64.b64encode(secrets.token_bytes(32)).decode()
    second = base64.b64encode(secrets.token_bytes(32)).decode()
    LocalKeyStore(key_dir, first).create_tenant("acme")
    other = LocalKeyStore(key_dir, second)
    with pytest.raises(KeyStoreError) as info:
        other.salt_versions("acme")
    assert "master key" in str(info.value)
    with pytest.raises(KeyStoreError):
        other.keyed_hash("acme", 1, DATA)
    with pytest.raises(KeyStoreError):
        other.sign("acme", b"x")


def test_unknown_tenant_and_double_create(store: LocalKeyStore) -> None:
    assert not store.has_tenant("acme")
    with pytest.raises(NotFound):
        store.salt_versions("acme")
    store.create_tenant("acme")
    assert store.has_tenant("acme")
    with pytest.raises(KeyStoreError):
        store.create_tenant("acme")


def test_tenants_have_independent_salts_and_keys(store: LocalKeyStore) -> None:
    store.create_tenant("acme")
    store.create_tenant("beta")
    assert store.keyed_hash("acme", 1, DATA) != store.keyed_hash("beta", 1, DATA)
    assert store.sign("acme", b"x").kid != store.sign("beta", b"x").kid


def test_salt_rotation_adds_a_version_and_keeps_the_old_one(
    key_dir: Path, store: LocalKeyStore
) -> None:
    store.create_tenant("acme")
    v1_before = store.keyed_hash("acme", 1, DATA)
    assert store.salt_versions("acme") == [1]
    backdate(tenant_file(key_dir, "acme"))
    assert store.rotate("acme", KeyKind.SALT) == "2"
    assert store.salt_versions("acme") == [1, 2]
    v1, v2 = store.keyed_hash("acme", 1, DATA), store.keyed_hash("acme", 2, DATA)
    assert v1 == v1_before
    assert v1 != v2
    assert len(v2) == 32
    assert store.keyed_hash("acme", 2, DATA) == v2  # deterministic
    assert store.keyed_hash("acme", 2, b"other") != v2
    with pytest.raises(KeyStoreError):
        store.keyed_hash("acme", 3, DATA)
    backdate(tenant_file(key_dir, "acme"))
    assert store.rotate("acme", KeyKind.SALT) == "3"
    assert store.salt_versions("acme") == [1, 2, 3]
    assert len({store.keyed_hash("acme", v, DATA) for v in (1, 2, 3)}) == 3


def test_signing_rotation_retires_the_old_key(key_dir: Path, store: LocalKeyStore) -> None:
    store.create_tenant("acme")
    old = store.sign("acme", b"checkpoint one")
    assert old.kid == signing.jwk_thumbprint(old.public_key)
    assert signing.verify(old.public_key, old.signature, b"checkpoint one")
    backdate(tenant_file(key_dir, "acme"))
    new_kid = store.rotate("acme", KeyKind.SIGNING)
    assert new_kid != old.kid
    new = store.sign("acme", b"checkpoint two")
    assert new.kid == new_kid
    assert new.public_key != old.public_key
    assert signing.verify(new.public_key, new.signature, b"checkpoint two")
    assert not signing.verify(old.public_key, new.signature, b"checkpoint two")
    keys = store.signing_keys("acme")
    assert [k.kid for k in keys] == [old.kid, new_kid]
    assert keys[0].retired_at is not None
    assert keys[1].retired_at is None
    assert keys[0].public_key == old.public_key
    # The old signature still verifies under the listed (retired) key.
    assert signing.verify(keys[0].public_key, old.signature, b"checkpoint one")


def test_webhook_rotation_keeps_only_the_new_secret_live(
    key_dir: Path, store: LocalKeyStore
) -> None:
    webhook = base64.b64decode(store.create_tenant("acme").removeprefix("whsec_"))
    assert store.webhook_mac("acme", b"msg") == [hmac.new(webhook, b"msg", sha256).digest()]
    backdate(tenant_file(key_dir, "acme"))
    store.rotate("acme", KeyKind.WEBHOOK)
    macs = store.webhook_mac("acme", b"msg")
    assert len(macs) == 1
    assert macs[0] != hmac.new(webhook, b"msg", sha256).digest()


def test_another_instance_sees_a_rotation(key_dir: Path, store: LocalKeyStore) -> None:
    """Two LocalKeyStores on one directory stand for two processes (API and CLI)."""
    store.create_tenant("acme")
    backdate(tenant_file(key_dir, "acme"))
    other = LocalKeyStore(key_dir, refresh_seconds=0)
    assert other.salt_versions("acme") == [1]
    old_kid = other.sign("acme", b"x").kid
    store.rotate("acme", KeyKind.SALT)
    assert other.salt_versions("acme") == [1, 2]
    assert other.keyed_hash("acme", 2, DATA) == store.keyed_hash("acme", 2, DATA)
    backdate(tenant_file(key_dir, "acme"))
    other.rotate("acme", KeyKind.SIGNING)  # and the other way round
    assert store.sign("acme", b"x").kid != old_kid
    assert store.salt_versions("acme") == [1, 2]
    assert [k.kid for k in store.signing_keys("acme")] == [
        k.kid for k in other.signing_keys("acme")
    ]


def test_a_rotation_with_an_unchanged_mtime_is_still_seen(key_dir: Path) -> None:
    first = LocalKeyStore(key_dir, refresh_seconds=0)
    first.create_tenant("acme")
    other = LocalKeyStore(key_dir, refresh_seconds=0)
    assert other.salt_versions("acme") == [1]  # cached
    path = tenant_file(key_dir, "acme")
    cached_mtime = path.stat().st_mtime_ns
    first.rotate("acme", KeyKind.SALT)
    # What a coarse-timestamp filesystem does when both writes land in one tick:
    os.utime(path, ns=(path.stat().st_atime_ns, cached_mtime))
    assert other.salt_versions("acme") == [1, 2]


def _doc(key_dir: Path, tenant: str) -> dict[str, Any]:
    return dict(json.loads(tenant_file(key_dir, tenant).read_text()))


def _entry(doc: dict[str, Any], kind: str, ident: str | None = None) -> dict[str, Any]:
    return next(
        e for e in doc["entries"] if e["kind"] == kind and (ident is None or e["id"] == ident)
    )


def test_entries_cannot_be_swapped_between_tenants(key_dir: Path, store: LocalKeyStore) -> None:
    store.create_tenant("acme")
    store.create_tenant("beta")
    acme, beta = _doc(key_dir, "acme"), _doc(key_dir, "beta")
    _entry(beta, "salt", "1")["wrapped"] = _entry(acme, "salt", "1")["wrapped"]
    tenant_file(key_dir, "beta").write_text(json.dumps(beta))
    fresh = LocalKeyStore(key_dir)
    with pytest.raises(KeyStoreError):
        fresh.keyed_hash("beta", 1, DATA)
    assert fresh.keyed_hash("acme", 1, DATA) == store.keyed_hash("acme", 1, DATA)


def test_entries_cannot_be_swapped_between_kinds_or_versions(
    key_dir: Path, store: LocalKeyStore
) -> None:
    store.create_tenant("acme")
    store.rotate("acme", KeyKind.SALT)
    pristine = tenant_file(key_dir, "acme").read_text()
    swaps = [(("salt", "1"), ("webhook", "1")), (("salt", "2"), ("salt", "1"))]
    for (dst_kind, dst_id), (src_kind, src_id) in swaps:
        doc = json.loads(pristine)
        _entry(doc, dst_kind, dst_id)["wrapped"] = _entry(doc, src_kind, src_id)["wrapped"]
        tenant_file(key_dir, "acme").write_text(json.dumps(doc))
        with pytest.raises(KeyStoreError):
            LocalKeyStore(key_dir).salt_versions("acme")


def test_a_tampered_wrapped_secret_is_refused(key_dir: Path, store: LocalKeyStore) -> None:
    store.create_tenant("acme")
    doc = _doc(key_dir, "acme")
    entry = _entry(doc, "signing")
    raw = bytearray(base64.b64decode(entry["wrapped"]))
    raw[-1] ^= 0x01
    entry["wrapped"] = base64.b64encode(bytes(raw)).decode()
    tenant_file(key_dir, "acme").write_text(json.dumps(doc))
    with pytest.raises(KeyStoreError):
        LocalKeyStore(key_dir).sign("acme", b"x")


def test_another_process_rotation_is_seen_after_the_refresh_interval(
    key_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr("consentgate.crypto.keystore.time.monotonic", lambda: clock[0])
    api = LocalKeyStore(key_dir, refresh_seconds=1.0)
    api.create_tenant("acme")
    assert api.salt_versions("acme") == [1]
    LocalKeyStore(key_dir).rotate("acme", KeyKind.SALT)  # the CLI, another process
    clock[0] += 0.5
    assert api.salt_versions("acme") == [1]  # not looked yet: within the interval
    clock[0] += 0.6
    assert api.salt_versions("acme") == [1, 2]
