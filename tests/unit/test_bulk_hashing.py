"""Keyed hashing in bulk: the key store's ``keyed_hash_many`` and ``SubjectLinks.current_hashes``
give exactly the one-at-a-time answers, under the right salt version and tenant."""

from __future__ import annotations

import hmac
from hashlib import sha256
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consentgate.consent.subjects import SubjectLinks
from consentgate.crypto.keystore import KeyKind, LocalKeyStore
from consentgate.domain.identity import Identifier, IdentifierKind
from consentgate.errors import KeyStoreError


@pytest.fixture
def store(tmp_path: Path) -> LocalKeyStore:
    keys = LocalKeyStore(tmp_path / "keys", refresh_seconds=0)
    keys.create_tenant("acme")
    keys.create_tenant("beta")
    return keys


@settings(max_examples=50, deadline=None)
@given(items=st.lists(st.binary(max_size=200), max_size=30))
def test_many_equals_one_at_a_time(
    tmp_path_factory: pytest.TempPathFactory, items: list[bytes]
) -> None:
    keys = LocalKeyStore(tmp_path_factory.mktemp("keys"), refresh_seconds=0)
    keys.create_tenant("acme")
    salt = keys._entries("acme")[1][("salt", "1")]  # private: only to check the construction
    many = keys.keyed_hash_many("acme", 1, items)
    assert many == [keys.keyed_hash("acme", 1, item) for item in items]
    assert many == [hmac.new(salt, item, sha256).digest() for item in items]


def test_versions_and_tenants_stay_apart(store: LocalKeyStore) -> None:
    items = [b"+447400123456", b"+447400123457"]
    v1 = store.keyed_hash_many("acme", 1, items)
    assert store.rotate("acme", KeyKind.SALT) == "2"
    v2 = store.keyed_hash_many("acme", 2, items)
    assert v1 != v2 and v1 == store.keyed_hash_many("acme", 1, items)
    assert v2 == [store.keyed_hash("acme", 2, item) for item in items]
    assert store.keyed_hash_many("beta", 1, items) != v1
    assert store.keyed_hash_many("acme", 1, iter(items)) == v1  # any iterable, in order
    with pytest.raises(KeyStoreError):
        store.keyed_hash_many("acme", 3, items)


def test_current_hashes_are_the_current_version_of_hash_identifier(store: LocalKeyStore) -> None:
    links = SubjectLinks(store)
    numbers = ["+447400123456", "+16502530000", "+447400123456"]
    assert links.current_hashes("acme", []) == []
    for _ in range(2):  # before and after a salt rotation
        expected = [
            links.hash_identifier("acme", Identifier(IdentifierKind.PHONE, n)).current
            for n in numbers
        ]
        assert links.current_hashes("acme", numbers) == expected
        store.rotate("acme", KeyKind.SALT)
