"""Metric labels come only from closed sets: whatever a caller passes, an identifier never
becomes a label value. Also: each App-level registry is its own (no global state)."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from consentgate.observability import metrics as m
from consentgate.observability.metrics import Metrics

HOSTILE = [
    "+447911123456",
    "07911 123456",
    "alice@example.com",
    "ZXhhbXBsZS1oYXNoZWQtaWQtMTIzNDU2Nzg5MDEy",  # a hashed id
    "3f2b8c1e-4d6a-4b8e-9c1a-2f3e4d5c6b7a",  # a subject_ref / message id
    "cmp-consent-00042",
    "acme\nconsentgate_fake 1",
    "",
]


def _samples(metrics: Metrics) -> list[tuple[str, dict[str, str], float]]:
    text = generate_latest(metrics.registry).decode()
    return [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def test_hostile_values_are_mapped_into_closed_sets() -> None:
    metrics = Metrics()
    metrics.bind_names(lambda t: t == "acme", lambda t, p: (t, p) == ("acme", "marketing_rcs"))
    for bad in HOSTILE:
        metrics.consent_recorded(bad, [(bad, bad, bad)], replayed=1)
        metrics.gate_checked(bad, bad, from_cache=False)
        metrics.gate_prefiltered(bad, {bad: 2, None: 1})
        metrics.send_decided(bad, bad, bad, bad)
        metrics.send_decided(bad, "fallback", bad, bad)
        metrics.campaign_recipients(bad, bad)
        metrics.receipt(bad, bad, linked=False)
        metrics.webhook_delivery(bad, bad, bad, 1.0)
        metrics.http_request(bad, bad, 999, 0.01)
    values = {v for _, labels, _ in _samples(metrics) for k, v in labels.items() if k != "le"}
    allowed = (
        m.REASONS
        | m.MODES
        | m.ACTIONS
        | m.STATUSES
        | m.SOURCES
        | m.GATE_STAGES
        | m.GATE_RESULTS
        | m.CACHE_RESULTS
        | m.PROVIDERS
        | m.RECEIPT_KINDS
        | m.RECEIPT_OUTCOMES
        | m.CAMPAIGN_OUTCOMES
        | m.WEBHOOK_KINDS
        | m.WEBHOOK_OUTCOMES
        | m.METHODS
        | m.WEBHOOK_EVENT_TYPES
        | {m.OTHER, m.NONE, "0.1.0"}
    )
    assert values <= allowed, values - allowed
    # "fallback" was a real action, "denied" a real result: not everything became "other".
    assert {"fallback", "denied", "prefilter", "allowed"} <= values


def test_unbound_names_still_refuse_identifier_shapes() -> None:
    metrics = Metrics()  # no tenant catalogue to check against: shapes only
    for bad in ("+447911123456", "alice@example.com", HOSTILE[3], "0791 1123456"):
        metrics.consent_recorded(bad, [(bad, "granted", "web")])
    tenants = {labels["tenant"] for _, labels, _ in _samples(metrics) if "tenant" in labels}
    purposes = {
        labels["consent_type"] for _, labels, _ in _samples(metrics) if "consent_type" in labels
    }
    assert tenants == purposes == {m.OTHER}


def test_a_store_error_in_a_name_check_never_fails_the_count() -> None:
    metrics = Metrics()
    calls = []

    def flaky(name: str) -> bool:
        calls.append(name)
        if len(calls) == 1:
            raise OSError("store down")
        return True

    metrics.bind_names(flaky, lambda t, p: True)
    metrics.send_decided("acme", "sent", "native_e2ee", None)  # counted as other, not cached
    metrics.send_decided("acme", "sent", "native_e2ee", None)
    sends = {
        labels["tenant"]: value
        for name, labels, value in _samples(metrics)
        if name == "consentgate_send_decisions_total"
    }
    assert sends == {"other": 1, "acme": 1} and len(calls) == 2


def test_known_values_pass_through_and_count() -> None:
    metrics = Metrics()
    metrics.consent_recorded(
        "acme",
        [("marketing_rcs", "granted", "web"), ("marketing_rcs", "granted", "web")],
        replayed=3,
    )
    metrics.gate_checked("acme", None, from_cache=True)
    metrics.gate_checked("acme", "withdrawn", from_cache=False)
    metrics.gate_checked("acme", "no_consent", from_cache=None)
    metrics.gate_prefiltered("acme", {None: 7, "no_consent": 3, "withdrawn": 0})
    metrics.send_decided("acme", "fallback", "sms_redacted", "no_device_key")
    metrics.http_request("GET", "/v1/subjects/{hashed_id}/consents", 200, 0.003)
    metrics.webhook_delivery("crm", "consent.changed", "delivered", 2.0)
    got = {
        (name, tuple(sorted(labels.items()))): value for name, labels, value in _samples(metrics)
    }

    def value(name: str, **labels: str) -> float:
        return got[(name, tuple(sorted(labels.items())))]

    assert (
        value(
            "consentgate_consent_events_total",
            tenant="acme",
            consent_type="marketing_rcs",
            status="granted",
            source="web",
        )
        == 2
    )
    assert value("consentgate_consent_replays_total", tenant="acme") == 3
    check = {"tenant": "acme", "stage": "check"}
    assert value("consentgate_gate_decisions_total", **check, result="allowed", reason="none") == 1
    assert (
        value("consentgate_gate_decisions_total", **check, result="denied", reason="withdrawn") == 1
    )
    assert value("consentgate_gate_cache_lookups_total", result="hit") == 1
    assert value("consentgate_gate_cache_lookups_total", result="miss") == 1  # None: no lookup
    pre = {"tenant": "acme", "stage": "prefilter"}
    assert value("consentgate_gate_decisions_total", **pre, result="allowed", reason="none") == 7
    assert (
        value("consentgate_gate_decisions_total", **pre, result="denied", reason="no_consent") == 3
    )
    assert ("consentgate_gate_decisions_total", (*pre.items(), ("reason", "withdrawn"))) not in got
    assert (
        value(
            "consentgate_fallbacks_total",
            tenant="acme",
            mode="sms_redacted",
            reason="no_device_key",
        )
        == 1
    )
    route = {"method": "GET", "route": "/v1/subjects/{hashed_id}/consents"}
    assert value("consentgate_http_requests_total", **route, status="200") == 1
    assert value("consentgate_http_request_duration_seconds_count", **route) == 1
    assert value("consentgate_webhook_delivery_lag_seconds_sum", kind="crm") == 2.0


def test_each_metrics_object_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.consent_recorded("acme", [("analytics", "granted", "api")])
    assert any(n == "consentgate_consent_events_total" for n, _, _ in _samples(first))
    assert not any(n == "consentgate_consent_events_total" for n, _, _ in _samples(second))
