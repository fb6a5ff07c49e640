"""Tenants are walled off, and API keys authenticate a tenant with scopes. SQLite and PG."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from consentgate.bootstrap import App
from consentgate.consent.ingest import EventInput, IngestResult
from consentgate.domain.clock import FixedClock
from consentgate.domain.consent import EffectiveStatus
from consentgate.domain.identity import normalise_phone
from consentgate.domain.timeutil import format_rfc3339
from consentgate.errors import Conflict, InvalidInput, NotFound, Unauthenticated
from consentgate.storage.tables import api_keys, subject_links
from consentgate.tenants.service import ALL_SCOPES, Scope

PHONE = "07911 123456"


def record(
    core: App, clock: FixedClock, tenant: str, consent_id: str, status: str = "granted", **who: Any
) -> IngestResult:
    event = EventInput(
        consent_id=consent_id,
        consent_type="marketing_rcs",
        status=status,
        timestamp=format_rfc3339(clock.now() - timedelta(hours=1)),
        **(who or {"phone": PHONE}),
    )
    [result] = core.ingest.ingest(tenant, "GB", [event], batch=False)
    return result


@pytest.fixture
def beta(core: App, tenant: dict[str, Any]) -> dict[str, Any]:
    return core.tenants.create("beta", "GB")


def test_another_tenant_cannot_see_a_subject(
    core: App, tenant: dict[str, Any], beta: dict[str, Any], clock: FixedClock
) -> None:
    acme = record(core, clock, "acme", "a1")
    with pytest.raises(NotFound):
        core.queries.by_hashed_id("beta", acme.hashed_id)
    with pytest.raises(NotFound):
        core.queries.history("beta", acme.hashed_id)
    with pytest.raises(NotFound):
        core.queries.by_identifier("beta", normalise_phone(PHONE, "GB"))
    # Nor can it write to acme's subject by naming its hash.
    with pytest.raises(InvalidInput) as info:
        record(core, clock, "beta", "b1", hashed_id=acme.hashed_id)
    assert info.value.field == "hashed_id"
    with core.engine.connect() as conn:
        assert core.ledger.tree_size(conn, "beta") == 0
        assert core.ledger.tree_size(conn, "acme") == 1
    # Acme still sees its own.
    assert core.queries.by_hashed_id("acme", acme.hashed_id).consents["marketing_rcs"].status is (
        EffectiveStatus.GRANTED
    )


def test_same_phone_in_two_tenants_is_two_unrelated_subjects(
    core: App, tenant: dict[str, Any], beta: dict[str, Any], clock: FixedClock
) -> None:
    a = record(core, clock, "acme", "same-id", "granted")
    b = record(core, clock, "beta", "same-id", "withdrawn")  # consent_ids are per tenant too
    assert a.created and b.created
    assert a.hashed_id != b.hashed_id
    assert a.seq == b.seq == 0  # each tenant has its own ledger
    with core.engine.connect() as conn:
        rows = {
            r.tenant_id: r
            for r in conn.execute(select(subject_links.c.tenant_id, subject_links.c.subject_ref))
        }
    assert set(rows) == {"acme", "beta"}
    assert rows["acme"].subject_ref != rows["beta"].subject_ref
    acme_history = core.queries.history("acme", a.hashed_id)
    beta_history = core.queries.history("beta", b.hashed_id)
    assert acme_history[0]["subject_ref"] == rows["acme"].subject_ref
    assert beta_history[0]["subject_ref"] == rows["beta"].subject_ref
    assert acme_history[0]["tenant"] == "acme"
    assert beta_history[0]["tenant"] == "beta"
    assert acme_history[0]["leaf_hash"] != beta_history[0]["leaf_hash"]
    phone = normalise_phone(PHONE, "GB")
    assert core.queries.by_identifier("acme", phone).consents["marketing_rcs"].status is (
        EffectiveStatus.GRANTED
    )
    assert core.queries.by_identifier("beta", phone).consents["marketing_rcs"].status is (
        EffectiveStatus.WITHDRAWN
    )
    # Each tenant's checkpoints are signed by its own key.
    assert core.ledger.verifier_keys("acme") != core.ledger.verifier_keys("beta")


def test_tenant_names_are_unique_and_validated(core: App, tenant: dict[str, Any]) -> None:
    with pytest.raises(Conflict):
        core.tenants.create("acme", "GB")
    for bad in ("", "Acme", "-acme", "acme-", "a_b", "a" * 64):
        with pytest.raises(InvalidInput) as info:
            core.tenants.create(bad)
        assert info.value.field == "name"
    with pytest.raises(InvalidInput) as info:
        core.tenants.create("gamma", "XX")
    assert info.value.field == "region"
    assert core.tenants.names() == ["acme"]


def test_authenticate(core: App, tenant: dict[str, Any], beta: dict[str, Any]) -> None:
    for missing in (None, ""):
        with pytest.raises(Unauthenticated):
            core.tenants.authenticate(missing)
    key = str(tenant["api_key"])
    for bad in ("nope", key + "x", key[:-1], key.upper(), "cg_" + "0" * 16 + "_" + "A" * 43):
        with pytest.raises(Unauthenticated) as info:
            core.tenants.authenticate(bad)
        assert bad not in str(info.value)
    principal = core.tenants.authenticate(key)
    assert principal.tenant == "acme"
    assert principal.scopes == ALL_SCOPES
    assert principal.region == "GB"
    assert key.startswith(f"cg_{principal.key_id}_")
    assert core.tenants.authenticate(str(beta["api_key"])).tenant == "beta"


def test_add_key_with_one_scope(core: App, tenant: dict[str, Any], beta: dict[str, Any]) -> None:
    new = core.tenants.add_key("acme", frozenset({Scope.AUDIT_READ}), "auditor")
    assert new.scopes == ["audit:read"]
    principal = core.tenants.authenticate(new.api_key)
    assert principal.tenant == "acme"
    assert principal.scopes == frozenset({Scope.AUDIT_READ})
    assert principal.key_id == new.key_id
    assert new.api_key != tenant["api_key"]
    # The owner key keeps every scope; keys of other tenants are unaffected.
    assert core.tenants.authenticate(str(tenant["api_key"])).scopes == ALL_SCOPES
    two = core.tenants.add_key("beta", frozenset({Scope.CONSENT_READ, Scope.SEND}))
    assert core.tenants.authenticate(two.api_key).scopes == {Scope.CONSENT_READ, Scope.SEND}
    assert core.tenants.authenticate(two.api_key).tenant == "beta"
    with pytest.raises(InvalidInput):
        core.tenants.add_key("acme", frozenset())
    with pytest.raises(InvalidInput):
        core.tenants.add_key("nobody", frozenset({Scope.ADMIN}))


def test_api_keys_are_stored_only_as_sha256(
    core: App, tenant: dict[str, Any], beta: dict[str, Any]
) -> None:
    extra = core.tenants.add_key("acme", frozenset({Scope.AUDIT_READ}))
    raw_keys = [str(tenant["api_key"]), str(beta["api_key"]), extra.api_key]
    with core.engine.connect() as conn:
        rows = list(conn.execute(select(api_keys)))
    assert len(rows) == 3
    stored = {r.key_hash for r in rows}
    assert stored == {hashlib.sha256(k.encode()).hexdigest() for k in raw_keys}
    for row in rows:
        cells = [str(v) for v in row._mapping.values() if v is not None]
        for raw in raw_keys:
            secret = raw.split("_", 2)[2]  # cg_<hex key id>_<secret>
            for cell in cells:
                assert raw not in cell
                assert secret not in cell
