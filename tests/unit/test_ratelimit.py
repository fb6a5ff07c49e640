"""The per-provider token bucket: exact on a fake clock, within bounds on the real one."""

from __future__ import annotations

import threading
import time

import pytest

from consentgate.config import load_settings
from consentgate.delivery.ratelimit import RateLimits, TokenBucket


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_burst_then_the_rate_exactly() -> None:
    t = FakeTime()
    bucket = TokenBucket(10, burst=3, monotonic=t.monotonic, sleep=t.sleep)
    for _ in range(3):
        assert bucket.acquire()
    assert t.now == 100.0  # the burst costs no waiting
    for _ in range(10):
        assert bucket.acquire()
    assert t.now == pytest.approx(101.0)  # then one token every 1/rate seconds


def test_a_token_due_after_the_deadline_is_not_taken() -> None:
    t = FakeTime()
    bucket = TokenBucket(2, burst=1, monotonic=t.monotonic, sleep=t.sleep)
    assert bucket.acquire(deadline=t.now)
    assert not bucket.acquire(deadline=t.now + 0.4)  # the next is due in 0.5 s
    assert t.now == 100.0  # and nothing was slept or reserved
    assert bucket.acquire(deadline=t.now + 0.5)
    assert t.now == pytest.approx(100.5)


def test_real_clock_threads_stay_within_the_rate() -> None:
    rate, window = 200.0, 0.5
    bucket = TokenBucket(rate)
    taken = [0] * 8
    started = time.monotonic()
    deadline = started + window

    def take(slot: int) -> None:
        while bucket.acquire(deadline):
            taken[slot] += 1

    threads = [threading.Thread(target=take, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    total = sum(taken)
    assert total <= bucket.burst + rate * elapsed + 1, (total, elapsed)
    assert total >= 0.5 * rate * window, (total, elapsed)


def test_rates_from_settings() -> None:
    settings = load_settings(
        {"CONSENTGATE_PROVIDER_RATE_RBM": "25", "CONSENTGATE_PROVIDER_RATE_SMS": "0"}
    )
    limits = RateLimits(settings.dispatch.provider_rates)
    assert limits.rate("rbm") == 25.0
    assert limits.bucket("sms") is None  # 0: no limit
    assert limits.rate("push") == settings.dispatch.provider_rates["push"]
