"""Tenant administration and API-key authentication.

An API key is ``cg_<key id>_<secret>`` with 256 bits of secret; only its SHA-256 is stored,
which for a random 256-bit secret is as strong as any slow hash and keeps authentication one
indexed lookup.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

import phonenumbers
from sqlalchemy import Connection, Engine, insert, select, update

from consentgate.crypto.keystore import KeyStore
from consentgate.domain.clock import Clock
from consentgate.domain.consent import DEFAULT_PURPOSES, Purpose
from consentgate.domain.timeutil import to_micros
from consentgate.errors import Conflict, InvalidInput, Unauthenticated
from consentgate.ledger.store import LedgerStore
from consentgate.storage.engine import read_tx, single_read, write_tx
from consentgate.storage.tables import api_keys, consent_state, purposes, tenants


class Scope(StrEnum):
    CONSENT_WRITE = "consent:write"
    CONSENT_READ = "consent:read"
    SEND = "send"
    AUDIT_READ = "audit:read"
    ANALYTICS_READ = "analytics:read"  # aggregates, DP queries (spend budget), join tokens
    ADMIN = "admin"


ALL_SCOPES = frozenset(Scope)
_TENANT_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_PURPOSE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a tenant and what its key may do."""

    tenant: str
    key_id: str
    scopes: frozenset[Scope]
    region: str | None


@dataclass(frozen=True, slots=True)
class NewKey:
    key_id: str
    api_key: str
    scopes: list[str]


def _hash_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def parse_scopes(text: str | list[str]) -> frozenset[Scope]:
    items = text if isinstance(text, list) else re.split(r"[,\s]+", text.strip())
    try:
        return frozenset(Scope(s) for s in items if s)
    except ValueError:
        allowed = ", ".join(s.value for s in Scope)
        raise InvalidInput(f"unknown scope; allowed: {allowed}", field="scopes") from None


class TenantService:
    """Tenants, keys and purposes. Reads on the request path (authentication, the purpose
    catalogue) are cached in-process for ``cache_seconds``; a change made through this
    process is seen at once, one made elsewhere within that time."""

    def __init__(
        self,
        engine: Engine,
        keystore: KeyStore,
        ledger: LedgerStore,
        clock: Clock,
        cache_seconds: float = 5.0,
    ):
        self._cache_seconds = cache_seconds
        self._principals: dict[str, tuple[float, Principal]] = {}
        self._catalogues: dict[str, tuple[float, dict[str, Purpose]]] = {}
        self._profiles: dict[str, tuple[float, tuple[bool, str | None]]] = {}
        self._engine = engine
        self._keys = keystore
        self._ledger = ledger
        self._clock = clock

    def create(self, name: str, region: str | None = None) -> dict[str, object]:
        if not _TENANT_NAME.match(name):
            raise InvalidInput(
                "tenant name must be 1-63 lower-case letters, digits or hyphens", field="name"
            )
        if region is not None:
            region = region.upper()
            if region not in phonenumbers.SUPPORTED_REGIONS:
                raise InvalidInput("region must be an ISO 3166 alpha-2 code", field="region")
        now = to_micros(self._clock.now())
        with write_tx(self._engine) as conn:
            if conn.execute(select(tenants.c.id).where(tenants.c.id == name)).first():
                raise Conflict(f"tenant {name!r} already exists")
            conn.execute(insert(tenants).values(id=name, region=region, created_us=now))
            conn.execute(
                insert(purposes),
                [
                    {
                        "tenant_id": name,
                        "name": p.name,
                        "max_age_seconds": None
                        if p.max_age is None
                        else int(p.max_age.total_seconds()),
                        "description": p.description,
                    }
                    for p in DEFAULT_PURPOSES
                ],
            )
            self._ledger.init_tenant(conn, name)
            key = self._insert_key(conn, name, ALL_SCOPES, "owner", now)
            # Keys are created last: if this fails the transaction rolls back with them unused.
            webhook_secret = self._keys.create_tenant(name)
        return {
            "tenant": name,
            "region": region,
            "api_key": key.api_key,
            "scopes": key.scopes,
            "webhook_secret": webhook_secret,
        }

    def add_key(self, name: str, scopes: frozenset[Scope], label: str | None = None) -> NewKey:
        if not scopes:
            raise InvalidInput("at least one scope is required", field="scopes")
        with write_tx(self._engine) as conn:
            if not conn.execute(select(tenants.c.id).where(tenants.c.id == name)).first():
                raise InvalidInput(f"no tenant named {name!r}", field="name")
            return self._insert_key(conn, name, scopes, label, to_micros(self._clock.now()))

    def _insert_key(
        self, conn: Connection, tenant: str, scopes: frozenset[Scope], label: str | None, now: int
    ) -> NewKey:
        key_id = secrets.token_hex(8)
        api_key = f"cg_{key_id}_{secrets.token_urlsafe(32)}"
        ordered = sorted(s.value for s in scopes)
        conn.execute(
            insert(api_keys).values(
                id=key_id,
                tenant_id=tenant,
                key_hash=_hash_key(api_key),
                scopes=" ".join(ordered),
                label=label,
                created_us=now,
            )
        )
        return NewKey(key_id, api_key, ordered)

    def authenticate(self, api_key: str | None) -> Principal:
        if not api_key:
            raise Unauthenticated("an API key is required: Authorization: Bearer <api key>")
        key_hash = _hash_key(api_key)
        cached = self._cached(key_hash)
        if cached is not None:
            return cached
        now = time.monotonic()
        with single_read(self._engine) as conn:
            row = conn.execute(
                select(api_keys.c.id, api_keys.c.tenant_id, api_keys.c.scopes, tenants.c.region)
                .join(tenants, tenants.c.id == api_keys.c.tenant_id)
                .where(api_keys.c.key_hash == key_hash, api_keys.c.revoked_us.is_(None))
            ).one_or_none()
        if row is None:
            raise Unauthenticated("the API key is not valid")
        principal = Principal(row.tenant_id, row.id, parse_scopes(row.scopes), row.region)
        if len(self._principals) > 10_000:
            self._principals.clear()
        self._principals[key_hash] = (now, principal)
        return principal

    def cached_principal(self, api_key: str) -> Principal | None:
        """The principal if this key was authenticated within the cache time (no I/O)."""
        return self._cached(_hash_key(api_key))

    def _cached(self, key_hash: str) -> Principal | None:
        cached = self._principals.get(key_hash)
        if cached is not None and time.monotonic() - cached[0] < self._cache_seconds:
            return cached[1]
        return None

    def catalogue(self, tenant: str) -> dict[str, Purpose]:
        """The purpose catalogue, cached (see the class docstring)."""
        cached = self._catalogues.get(tenant)
        now = time.monotonic()
        if cached is not None and now - cached[0] < self._cache_seconds:
            return cached[1]
        with single_read(self._engine) as conn:
            purposes_ = self.purposes(conn, tenant)
        self._catalogues[tenant] = (now, purposes_)
        return purposes_

    def _profile(self, name: str) -> tuple[bool, str | None]:
        """(exists, region), cached: tenants are never deleted and regions rarely change."""
        cached = self._profiles.get(name)
        now = time.monotonic()
        if cached is not None and now - cached[0] < self._cache_seconds:
            return cached[1]
        with single_read(self._engine) as conn:
            row = conn.execute(select(tenants.c.region).where(tenants.c.id == name)).one_or_none()
        profile = (row is not None, None if row is None or row.region is None else str(row.region))
        if profile[0]:
            self._profiles[name] = (now, profile)
        return profile

    def exists(self, name: str) -> bool:
        return self._profile(name)[0]

    def region(self, name: str) -> str | None:
        return self._profile(name)[1]

    def any_tenant(self) -> bool:
        with read_tx(self._engine) as conn:
            return conn.execute(select(tenants.c.id).limit(1)).first() is not None

    def names(self) -> list[str]:
        with read_tx(self._engine) as conn:
            return [r[0] for r in conn.execute(select(tenants.c.id).order_by(tenants.c.id))]

    def purposes(self, conn: Connection, tenant: str) -> dict[str, Purpose]:
        rows = conn.execute(
            select(purposes.c.name, purposes.c.max_age_seconds, purposes.c.description).where(
                purposes.c.tenant_id == tenant
            )
        )
        return {
            r.name: Purpose(
                r.name,
                None if r.max_age_seconds is None else timedelta(seconds=r.max_age_seconds),
                r.description,
            )
            for r in rows
        }

    def list_purposes(self, tenant: str) -> list[Purpose]:
        with read_tx(self._engine) as conn:
            return sorted(self.purposes(conn, tenant).values(), key=lambda p: p.name)

    def set_purpose(
        self, tenant: str, name: str, max_age_days: int | None, description: str
    ) -> Purpose:
        """Create or change a purpose; stored grant expiries of that purpose follow at once."""
        if not _PURPOSE_NAME.match(name):
            raise InvalidInput(
                "purpose names are 1-64 lower-case letters, digits or underscores", field="name"
            )
        max_age = None if max_age_days is None else timedelta(days=max_age_days)
        seconds = None if max_age is None else int(max_age.total_seconds())
        with write_tx(self._engine) as conn:
            exists = conn.execute(
                select(purposes.c.name).where(
                    purposes.c.tenant_id == tenant, purposes.c.name == name
                )
            ).first()
            values = {"max_age_seconds": seconds, "description": description}
            if exists:
                conn.execute(
                    update(purposes)
                    .where(purposes.c.tenant_id == tenant, purposes.c.name == name)
                    .values(**values)
                )
            else:
                conn.execute(insert(purposes).values(tenant_id=tenant, name=name, **values))
            conn.execute(
                update(consent_state)
                .where(
                    consent_state.c.tenant_id == tenant,
                    consent_state.c.consent_type == name,
                    consent_state.c.status == "granted",
                )
                .values(
                    expires_us=None
                    if seconds is None
                    else consent_state.c.effective_us + seconds * 1_000_000
                )
            )
        self._catalogues.pop(tenant, None)
        return Purpose(name, max_age, description)
