"""The outbox's pure rules: signatures (checked against the official standardwebhooks
package), the retry schedule, who receives what, endpoint validation, payload shapes."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook

from consentgate.errors import InvalidInput
from consentgate.outbox import events, rules
from consentgate.outbox.endpoints import check_endpoint


def test_signature_matches_the_standard_webhooks_reference() -> None:
    secret = bytes(range(32))
    body = events.render(
        events.message_decided(
            message_id="m1",
            subject_ref="ref-1",
            hashed_id="ab" * 32,
            consent_type="marketing_rcs",
            action="sent",
            mode="native_e2ee",
            reason=None,
            consent_seq=7,
            campaign_id=None,
        ),
        "2026-11-27T10:00:00Z",
    ).encode()
    now = int(datetime.now(UTC).timestamp())
    headers = rules.signed_headers(secret, "msg_1_ep_1", now, body)
    reference = Webhook(rules.format_secret(secret))
    assert (
        reference.sign("msg_1_ep_1", datetime.fromtimestamp(now, UTC), body.decode())
        == (headers["webhook-signature"])
    )
    assert reference.verify(body, headers)["data"]["consent_seq"] == 7
    tampered = body.replace(b'"sent"', b'"skipped"')
    with pytest.raises(Exception, match="signature"):
        reference.verify(tampered, headers)


def test_webhook_id_is_stable_per_event_and_endpoint() -> None:
    assert rules.webhook_id("e1", "ep_a") == rules.webhook_id("e1", "ep_a")
    assert rules.webhook_id("e1", "ep_a") != rules.webhook_id("e1", "ep_b")
    assert rules.webhook_id("e1", "ep_a") != rules.webhook_id("e2", "ep_a")


@given(
    attempts=st.integers(min_value=1, max_value=200),
    elapsed=st.floats(min_value=0, max_value=400_000),
    draw=st.floats(min_value=0, max_value=1),
)
def test_retry_is_full_jitter_under_a_doubling_capped_ceiling(
    attempts: int, elapsed: float, draw: float
) -> None:
    policy = rules.RetryPolicy(base_seconds=5, cap_seconds=3600, give_up_seconds=3 * 86_400)
    queued = 1_000_000_000
    now = queued + int(elapsed * 1_000_000)
    due = policy.after_failure(attempts, now, queued, lambda: draw)
    deadline = queued + 3 * 86_400 * 1_000_000
    if now >= deadline:
        assert due is None
        return
    assert due is not None
    ceiling = min(3600.0, 5.0 * 2 ** (attempts - 1)) * 1_000_000
    assert now <= due <= min(now + ceiling, deadline)


def test_retry_delays_spread_over_the_whole_window() -> None:
    policy = rules.RetryPolicy(base_seconds=5)
    rng = random.Random(7)
    delays = [policy.after_failure(3, 0, 0, rng.random) for _ in range(2000)]
    assert all(d is not None and 0 <= d <= 20_000_000 for d in delays)
    assert min(d for d in delays if d is not None) < 1_000_000  # full jitter reaches near 0
    assert max(d for d in delays if d is not None) > 19_000_000
    assert policy.ceiling_us(1) == 5_000_000
    assert policy.ceiling_us(30) == 3_600_000_000


def test_cmp_endpoints_get_only_what_originates_here() -> None:
    types = frozenset({events.CONSENT_CHANGED})
    stop = events.consent_changed(
        subject_ref="r",
        hashed_id="h" * 64,
        consent_type="marketing_rcs",
        status="withdrawn",
        timestamp="2026-11-27T10:00:00Z",
        cmp_version=None,
        consent_id="sms:SM1:marketing_rcs",
        ledger_seq=3,
        source="inbound_keyword",
        state_changed=True,
    )
    from_cmp = events.consent_changed(
        subject_ref="r",
        hashed_id="h" * 64,
        consent_type="marketing_rcs",
        status="granted",
        timestamp="2026-11-27T10:00:00Z",
        cmp_version="2.1",
        consent_id="cmp-1",
        ledger_seq=2,
        source="web",
        state_changed=True,
    )
    assert rules.wants("cmp", types, stop.event_type, stop.to_cmp)
    assert not rules.wants("cmp", types, from_cmp.event_type, from_cmp.to_cmp)
    assert rules.wants("crm", types, from_cmp.event_type, from_cmp.to_cmp)
    assert not rules.wants("crm", frozenset({events.MESSAGE_DECIDED}), stop.event_type, True)
    body = json.loads(events.render(stop, "2026-11-27T10:00:01Z"))
    assert set(body) == {"type", "timestamp", "data"}
    assert set(body["data"]) == {
        "hashed_id",
        "consent_type",
        "status",
        "timestamp",
        "cmp_version",
        "consent_id",
        "ledger_seq",
        "source",
        "state_changed",
    }


def test_a_message_to_a_non_subject_is_ordered_and_erased_by_its_hash() -> None:
    assert events.order_key(None, "ab" * 32) == "h:" + "ab" * 32
    assert events.order_key("ref", "ab" * 32) == "ref"


@pytest.mark.parametrize(
    ("url", "types", "kind", "field"),
    [
        ("ftp://crm.example/hook", ["consent.changed"], "crm", "url"),
        ("crm.example/hook", ["consent.changed"], "crm", "url"),
        ("https://user:pw@crm.example/hook", ["consent.changed"], "crm", "url"),
        ("https://crm.example:99999/hook", ["consent.changed"], "crm", "url"),
        ("https://crm.example/a b", ["consent.changed"], "crm", "url"),
        ("https:///nohost", ["consent.changed"], "crm", "url"),
        ("https://crm.example/hook", [], "crm", "event_types"),
        ("https://crm.example/hook", ["consent.changed", "consent.*"], "crm", "event_types[1]"),
        ("https://crm.example/hook", ["consent.changed"], "erp", "kind"),
    ],
)
def test_endpoint_validation_names_the_field(
    url: str, types: list[str], kind: str, field: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_endpoint(url, types, kind)
    assert caught.value.field == field


def test_endpoint_event_types_are_deduplicated_in_order() -> None:
    url, types, kind = check_endpoint(
        "http://127.0.0.1:8000/hooks?x=1",
        ["message.read", "consent.changed", "message.read"],
        "cmp",
    )
    assert (url, types, kind) == (
        "http://127.0.0.1:8000/hooks?x=1",
        ("message.read", "consent.changed"),
        "cmp",
    )
