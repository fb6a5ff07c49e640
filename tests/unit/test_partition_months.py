"""Month partitions' pure arithmetic: bounds in UTC microseconds, year ends, names, spans."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from consentgate.config import load_settings
from consentgate.domain.timeutil import to_micros
from consentgate.errors import InvalidInput
from consentgate.storage.partitions import Month, months_between, months_to_ensure


def _us(*parts: int) -> int:
    return to_micros(datetime(*parts, tzinfo=UTC))  # type: ignore[misc]


def test_bounds_are_half_open_and_cross_the_year() -> None:
    december = Month(2026, 12)
    assert december.next() == Month(2027, 1)
    low, high = december.bounds_us()
    assert (low, high) == (_us(2026, 12, 1), _us(2027, 1, 1))
    assert Month.of_micros(low) == december and Month.of_micros(high - 1) == december
    assert Month.of_micros(high) == Month(2027, 1)
    assert december.partition("message_events") == "message_events_p202612"


def test_months_ahead_and_spans() -> None:
    assert months_to_ensure(_us(2026, 11, 30, 23, 59, 59), 2) == [
        Month(2026, 11),
        Month(2026, 12),
        Month(2027, 1),
    ]
    assert months_between(_us(2025, 11, 15), _us(2026, 2, 1)) == [
        Month(2025, 11),
        Month(2025, 12),
        Month(2026, 1),
        Month(2026, 2),
    ]
    assert months_between(_us(2026, 3, 1), _us(2026, 2, 1)) == []


def test_checkpoint_settings(tmp_path: object) -> None:
    base = {"CONSENTGATE_DATA_DIR": str(tmp_path)}
    defaults = load_settings(base).consent
    assert defaults.checkpoint_on_commit is True
    assert defaults.checkpoint_interval_seconds == 1.0
    chosen = load_settings(
        {
            **base,
            "CONSENTGATE_CHECKPOINT_ON_COMMIT": "false",
            "CONSENTGATE_CHECKPOINT_INTERVAL_SECONDS": "0.5",
        }
    ).consent
    assert (chosen.checkpoint_on_commit, chosen.checkpoint_interval_seconds) == (False, 0.5)
    for name, bad in (
        ("CONSENTGATE_CHECKPOINT_ON_COMMIT", "sometimes"),
        ("CONSENTGATE_CHECKPOINT_INTERVAL_SECONDS", "0"),
        ("CONSENTGATE_CHECKPOINT_INTERVAL_SECONDS", "soon"),
    ):
        with pytest.raises(InvalidInput) as caught:
            load_settings({**base, name: bad})
        assert caught.value.field == name
