"""A lookup by raw identifier after a salt rotation answers with a hashed_id that resolves."""

from __future__ import annotations

from typing import Any

from consentgate.bootstrap import App
from consentgate.consent.ingest import EventInput
from consentgate.crypto.keystore import KeyKind
from consentgate.domain.identity import normalise_phone


def test_lookup_returns_a_resolvable_hash_after_rotation(core: App, tenant: dict[str, Any]) -> None:
    [first] = core.ingest.ingest(
        "acme",
        "GB",
        [
            EventInput(
                "r-1", "marketing_rcs", "granted", "2026-11-01T10:00:00Z", phone="07911123456"
            )
        ],
        batch=False,
    )
    core.keystore.rotate("acme", KeyKind.SALT)
    found = core.queries.by_identifier("acme", normalise_phone("+447911123456", None))
    assert found.hashed_id == first.hashed_id  # no v2 link yet: the v1 hash is the usable one
    assert core.queries.by_hashed_id("acme", found.hashed_id).consents == found.consents
    [second] = core.ingest.ingest(
        "acme",
        "GB",
        [EventInput("r-2", "analytics", "granted", "2026-11-02T10:00:00Z", phone="07911123456")],
        batch=False,
    )
    assert second.hashed_id != first.hashed_id
    again = core.queries.by_identifier("acme", normalise_phone("07911 123456", "GB"))
    assert again.hashed_id == second.hashed_id
    assert set(again.consents) == {"marketing_rcs", "analytics"}
    assert core.queries.by_hashed_id("acme", first.hashed_id).consents == again.consents
