"""A phone number kept beyond a request, sealed: AES-256-GCM under a fresh data key bound to
a context (``<campaign>:<seq>``, or a message id), the data key wrapped by the tenant's key
store. Used by the campaign queue and by revocable messages; the number is gone when the row
is (or when the key store forgets the tenant)."""

from __future__ import annotations

import secrets

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from consentgate.crypto.keystore import KeyStore


def seal_number(keys: KeyStore, tenant: str, context: str, e164: str) -> tuple[bytes, bytes]:
    """(sealed, wrapped data key)."""
    key = AESGCM.generate_key(bit_length=256)
    nonce = secrets.token_bytes(12)
    sealed = nonce + AESGCM(key).encrypt(nonce, e164.encode(), context.encode())
    return sealed, keys.wrap_data_key(tenant, key, context)


def unseal_number(keys: KeyStore, tenant: str, context: str, sealed: bytes, wrapped: bytes) -> str:
    key = keys.unwrap_data_key(tenant, wrapped, context)
    return AESGCM(key).decrypt(sealed[:12], sealed[12:], context.encode()).decode()
