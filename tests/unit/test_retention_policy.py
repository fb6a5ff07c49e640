"""The pure parts of retention and erasure: policy validation, cutoffs, the erasure rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consentgate.domain import consent as rules
from consentgate.domain.consent import ConsentStatus, StateEntry
from consentgate.domain.retention import DEFAULT_POLICY, RetentionPolicy, cutoffs, policy_from
from consentgate.domain.timeutil import to_micros
from consentgate.errors import InvalidInput

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def test_defaults_and_partial_replacement() -> None:
    assert policy_from({}) == DEFAULT_POLICY == RetentionPolicy(400, 400, 30)
    assert policy_from({"outbox_days": 7, "delivery_events_days": None}) == RetentionPolicy(
        400, 400, 7
    )


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"outbox_days": 0}, "outbox_days"),
        ({"outbox_days": -5}, "outbox_days"),
        ({"send_decisions_days": 3651}, "send_decisions_days"),
        ({"send_decisions_days": False}, "send_decisions_days"),
        ({"delivery_events_days": 1.0}, "delivery_events_days"),
        ({"delivery_events_days": "10"}, "delivery_events_days"),
        ({"retention_days": 10}, "retention_days"),
        ({"delivery_events_days": 30, "send_decisions_days": 29}, "delivery_events_days"),
    ],
)
def test_invalid_policies_name_the_field(values: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        policy_from(values)
    assert caught.value.field == field


@given(st.integers(1, 3650), st.integers(1, 3650), st.integers(1, 3650))
def test_cutoffs_are_exactly_the_horizons(events: int, decisions: int, outbox: int) -> None:
    events = min(events, decisions)
    policy = policy_from(
        {"delivery_events_days": events, "send_decisions_days": decisions, "outbox_days": outbox}
    )
    cut = cutoffs(policy, NOW)
    assert cut.delivery_events_us == to_micros(NOW - timedelta(days=events))
    assert cut.send_decisions_us == to_micros(NOW - timedelta(days=decisions))
    assert cut.outbox_us == to_micros(NOW - timedelta(days=outbox))
    assert cut.delivery_events_us >= cut.send_decisions_us


def _entry(seq: int) -> StateEntry:
    return StateEntry(ConsentStatus.GRANTED, NOW, seq, f"c{seq}")


def test_forget_removes_only_that_subject() -> None:
    state = {("a", "p1"): _entry(0), ("a", "p2"): _entry(1), ("b", "p1"): _entry(2)}
    removed = rules.forget(state, "a", ["p1", "p2", "p3"])
    assert removed == [("a", "p1"), ("a", "p2")]
    assert state == {("b", "p1"): _entry(2)}
    assert rules.is_erasure("erased", "*")
    assert not rules.is_erasure("erased", "marketing_rcs")
    assert not rules.is_erasure("withdrawn", "*")
    with pytest.raises(ValueError, match="not a valid ConsentStatus"):
        ConsentStatus(rules.ERASED)  # never a consent status: ingest refuses it
