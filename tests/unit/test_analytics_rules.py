"""The pure analytics rules and the OpenDP release: group-by parsing, k-suppression at the
boundary, exact budget arithmetic, months and days, token shape, and the noise distribution
(a fixed number of draws compared with the discrete Laplace law, not exact values)."""

from __future__ import annotations

import math
import statistics
from datetime import UTC, datetime

import pytest

from consentgate.analytics.noise import plan_laplace
from consentgate.analytics.rules import (
    Dimension,
    can_charge,
    check_tokens,
    days_in,
    encode_token,
    engagement_sensitivity,
    epsilon_micro,
    month_range_us,
    parse_group_by,
    parse_month,
    suppressed,
)
from consentgate.domain.timeutil import to_micros
from consentgate.errors import InvalidInput

NOW = datetime(2026, 11, 15, tzinfo=UTC)


def test_group_by_is_a_closed_list() -> None:
    assert parse_group_by("day, mode") == (Dimension.DAY, Dimension.MODE)
    assert parse_group_by("") == ()
    assert parse_group_by(None) == ()
    for bad in ("phone", "hashed_id", "subject_ref", "message_id", "day,day", "day,,mode"):
        with pytest.raises(InvalidInput) as info:
            parse_group_by(bad)
        assert info.value.field == "group_by"


@pytest.mark.parametrize("k", [2, 10, 50])
def test_suppression_is_below_k_exactly(k: int) -> None:
    assert suppressed(k - 1, k)
    assert not suppressed(k, k)
    assert suppressed(k - 0.5, k)  # noisy counts are compared the same way


def test_budget_arithmetic_is_exact_and_never_favours_spending() -> None:
    assert epsilon_micro(0.3) == 300_000
    assert epsilon_micro(0.1) * 3 == epsilon_micro(0.3)
    assert epsilon_micro(6.999999999999999) == 7_000_000  # a charge rounds up
    assert epsilon_micro(0.0000015, up=False) == 1  # a limit rounds down
    limit = epsilon_micro(1.0, up=False)
    assert can_charge(700_000, 300_000, limit)
    assert not can_charge(700_001, 300_000, limit)
    assert not can_charge(0, 0, limit)  # a free query is not a query


def test_sensitivity_counts_every_metric_of_every_kept_message() -> None:
    assert engagement_sensitivity(1) == 4
    assert engagement_sensitivity(3) == 12


def test_months_and_days() -> None:
    assert parse_month("2026-11", NOW) == "2026-11"
    for bad in ("2026-12", "2026-00", "2026-13", "202611", "2026-1"):
        with pytest.raises(InvalidInput):
            parse_month(bad, NOW)
    start, end = month_range_us("2026-12")
    assert start == to_micros(datetime(2026, 12, 1, tzinfo=UTC))
    assert end == to_micros(datetime(2027, 1, 1, tzinfo=UTC))
    # Half-open: a window ending at midnight does not include the next day.
    days = days_in(to_micros(datetime(2026, 11, 1, tzinfo=UTC)), end - 31 * 86_400_000_000)
    assert len(days) == 30
    with pytest.raises(InvalidInput):
        days_in(end, start)
    with pytest.raises(InvalidInput):
        days_in(0, 400 * 86_400_000_000)


def test_tokens_must_be_canonical_base64url_of_32_bytes() -> None:
    token = encode_token(bytes(range(32)))
    assert len(token) == 43 and "=" not in token
    assert check_tokens([token, token]) == [token]
    for bad in (token[:-1], token + "A", token[:-1] + "B", "0" * 64, token[:-1] + "+", 7):
        with pytest.raises(InvalidInput):
            check_tokens([token, bad])


def _discrete_laplace_variance(scale: float) -> float:
    t = math.exp(-1 / scale)
    return 2 * t / (1 - t) ** 2


@pytest.mark.parametrize(("epsilon", "sensitivity", "scale"), [(1.0, 1, 1.0), (0.5, 4, 8.0)])
def test_noise_follows_the_discrete_laplace_law(
    epsilon: float, sensitivity: int, scale: float
) -> None:
    plan = plan_laplace(epsilon, sensitivity)
    assert plan.scale == pytest.approx(scale)
    assert epsilon * 0.999 <= plan.epsilon <= epsilon  # OpenDP's own privacy map
    truth = 10_000
    draws = 4000
    noise = [v - truth for v in plan.release([truth] * draws)]
    # Centred on the truth, spread as the law says (tolerances ≥ 6 standard errors).
    variance = _discrete_laplace_variance(scale)
    assert abs(statistics.fmean(noise)) < 6 * math.sqrt(variance / draws)
    assert statistics.pvariance(noise) == pytest.approx(variance, rel=0.25)
    t = math.exp(-1 / scale)
    p_zero = (1 - t) / (1 + t)
    observed = noise.count(0) / draws
    assert abs(observed - p_zero) < 6 * math.sqrt(p_zero * (1 - p_zero) / draws)
    assert len(set(noise)) > 3  # noise, not a constant shift


def test_releases_are_clamped_at_zero_and_keep_their_length() -> None:
    plan = plan_laplace(0.1, 4)
    released = plan.release([0] * 500)
    assert len(released) == 500 and min(released) == 0 and max(released) > 0
    assert plan.release([]) == []
