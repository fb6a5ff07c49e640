"""A consent_id that carries the event's own phone number or e-mail address is refused (422)
and nothing is recorded: the id is kept verbatim in the append-only ledger, beyond erasure."""

from __future__ import annotations

from typing import Any

import pytest

from consentgate.bootstrap import App
from consentgate.consent.ingest import EventInput
from consentgate.errors import InvalidInput
from consentgate.storage.engine import read_tx


def _size(core: App) -> int:
    with read_tx(core.engine) as conn:
        return core.ledger.tree_size(conn, "acme")


def _event(consent_id: str, **who: Any) -> EventInput:
    return EventInput(
        consent_id=consent_id,
        consent_type="marketing_rcs",
        status="granted",
        timestamp="2026-11-01T10:00:00Z",
        **(who or {"phone": "+447911123456"}),
    )


@pytest.mark.parametrize(
    "consent_id",
    [
        "+447911123456",
        "+447911123456-marketing_rcs",
        "cmp:07911 123456",
        "44-7911-123-456/sms",
        "wa_447911123456",
    ],
)
def test_an_id_made_from_the_number_is_refused(
    core: App, tenant: dict[str, Any], consent_id: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        core.ingest.ingest("acme", "GB", [_event(consent_id)], batch=False)
    assert caught.value.field == "consent_id"
    assert _size(core) == 0  # nothing recorded


def test_an_id_made_from_the_address_is_refused(core: App, tenant: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput):
        core.ingest.ingest(
            "acme",
            "GB",
            [_event("sub-Alice.Smith@Example.org", email="alice.smith@example.org")],
            batch=False,
        )


@pytest.mark.parametrize(
    "consent_id",
    ["cmp-7f3a", "1234567890123", "order-7911123", "+447911654321", "a79b11c12d3456"],
)
def test_other_ids_are_kept(core: App, tenant: dict[str, Any], consent_id: str) -> None:
    """Numeric ids, a shorter run of the number, another person's number, the number's
    digits spread between letters (as in a hex digest): all fine."""
    [result] = core.ingest.ingest("acme", "GB", [_event(consent_id)], batch=False)
    assert result.created


def test_a_batch_names_the_offending_event(core: App, tenant: dict[str, Any]) -> None:
    events = [_event("ok-1"), _event("07911123456-x")]
    with pytest.raises(InvalidInput) as caught:
        core.ingest.ingest("acme", "GB", events, batch=True)
    assert caught.value.field == "events[1].consent_id"
    assert _size(core) == 0
