"""The LISTEN/NOTIFY half of cache invalidation (PostgreSQL): a consent change committed by a
writer reaches a listener, which evicts the key and observes how long the change took to
arrive (``consentgate_consent_invalidation_reach_seconds``)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from consentgate.bootstrap import App
from consentgate.consent.ingest import EventInput
from consentgate.domain.clock import FixedClock
from consentgate.domain.timeutil import format_rfc3339
from consentgate.gate.cache import CachedState, StateCache
from consentgate.gate.notify import InvalidationListener, libpq_dsn
from consentgate.observability.metrics import Metrics

REACH = "consentgate_consent_invalidation_reach_seconds"


def _sample(metrics: Metrics, suffix: str, labels: dict[str, str] | None = None) -> float:
    value = metrics.registry.get_sample_value(REACH + suffix, labels)
    return 0.0 if value is None else float(value)


@pytest.mark.parametrize("backend", ["pg"])
def test_a_change_reaches_the_listener_which_evicts_and_measures(
    core: App, tenant: dict[str, Any], clock: FixedClock
) -> None:
    cache = StateCache()
    metrics = Metrics()
    listener = InvalidationListener(libpq_dsn(core.engine), cache, 0.05, metrics)
    assert listener.start()
    try:
        event = EventInput(
            consent_id="c-w1",
            consent_type="marketing_rcs",
            status="granted",
            timestamp=format_rfc3339(clock.now()),
            phone="+447911123456",
        )
        (result,) = core.ingest.ingest("acme", "GB", [event], batch=False)
        deadline = time.monotonic() + 10
        while _sample(metrics, "_count") < 1:
            assert time.monotonic() < deadline, "the change never reached the listener"
            time.sleep(0.01)
        refs = core.links.known_hashed
        with core.engine.connect() as conn:
            ref = refs(conn, "acme", [result.hashed_id])[result.hashed_id]
        key = ("acme", ref, "marketing_rcs")
        cache.put(key, CachedState("granted", None, 0), cache.token(key))
        assert cache.get(key) is not None
        withdrawal = EventInput(
            consent_id="c-w2",
            consent_type="marketing_rcs",
            status="withdrawn",
            timestamp=format_rfc3339(clock.now()),
            phone="+447911123456",
        )
        core.ingest.ingest("acme", "GB", [withdrawal], batch=False)
        while _sample(metrics, "_count") < 2:
            assert time.monotonic() < deadline, "the withdrawal never reached the listener"
            time.sleep(0.01)
        assert cache.get(key) is None  # evicted by the notification, not by this process
        assert listener.evictions == 2
        # Both arrived within the histogram's range, in well under a second on loopback.
        assert 0 <= _sample(metrics, "_sum") < 10
        assert _sample(metrics, "_bucket", {"le": "10.0"}) == 2
    finally:
        listener.stop()
