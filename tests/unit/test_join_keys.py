"""Monthly join keys in the local key store: created on first use, one per calendar month,
stored only wrapped, usable only through ``join_macs``, never rotated by hand."""

from __future__ import annotations

import base64
import hmac
import threading
from hashlib import sha256
from pathlib import Path

import pytest

from consentgate.crypto.keystore import KeyKind, LocalKeyStore
from consentgate.errors import KeyStoreError

HASHED = [b"a" * 64, b"b" * 64]


@pytest.fixture
def store(tmp_path: Path) -> LocalKeyStore:
    store = LocalKeyStore(tmp_path / "keys", refresh_seconds=0)
    store.create_tenant("acme")
    store.create_tenant("other")
    return store


def test_same_month_same_mac_other_month_or_tenant_another(store: LocalKeyStore) -> None:
    november = store.join_macs("acme", "2026-11", HASHED)
    assert store.join_macs("acme", "2026-11", HASHED) == november
    assert len(set(november)) == 2 and all(len(m) == 32 for m in november)
    december = store.join_macs("acme", "2026-12", HASHED)
    assert not set(december) & set(november)
    assert not set(store.join_macs("other", "2026-11", HASHED)) & set(november)


def test_join_keys_are_wrapped_on_disk_and_survive_a_restart(
    tmp_path: Path, store: LocalKeyStore
) -> None:
    macs = store.join_macs("acme", "2026-11", HASHED)
    store.join_macs("acme", "2026-12", HASHED)
    plain = store._entries("acme")[1]  # private: only to look for the key on disk
    key = plain[("join", "2026-11")]
    assert hmac.new(key, HASHED[0], sha256).digest() == macs[0]
    assert ("join", "2026-12") in plain and plain[("join", "2026-12")] != key
    text = (tmp_path / "keys" / "tenants" / "acme.json").read_text()
    for encoded in (key.hex(), base64.b64encode(key).decode().rstrip("=")):
        assert encoded not in text
    reopened = LocalKeyStore(tmp_path / "keys")
    assert reopened.join_macs("acme", "2026-11", HASHED) == macs  # old months keep working
    # Creating join keys leaves the other keys alone.
    assert reopened.salt_versions("acme") == [1]


def test_two_stores_creating_the_same_month_agree(tmp_path: Path, store: LocalKeyStore) -> None:
    stores = [LocalKeyStore(tmp_path / "keys", refresh_seconds=0) for _ in range(4)]
    start = threading.Barrier(len(stores))
    results: list[list[bytes]] = []

    def first_use(s: LocalKeyStore) -> None:
        start.wait()
        results.append(s.join_macs("acme", "2027-01", HASHED))

    threads = [threading.Thread(target=first_use, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and all(r == results[0] for r in results)
    assert [k for k in store._entries("acme", fresh=True)[1] if k[0] == "join"] == [
        ("join", "2027-01")
    ]


@pytest.mark.parametrize("month", ["2026-13", "2026-1", "26-11", "2026-11-01", "../x"])
def test_bad_months_are_refused(store: LocalKeyStore, month: str) -> None:
    with pytest.raises(KeyStoreError):
        store.join_macs("acme", month, HASHED)


def test_join_keys_are_not_rotated_by_hand(store: LocalKeyStore) -> None:
    with pytest.raises(KeyStoreError):
        store.rotate("acme", KeyKind.JOIN)
