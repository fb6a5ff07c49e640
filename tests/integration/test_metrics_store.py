"""Metrics that must be right across processes come from the store at scrape time (SQLite and
PostgreSQL): campaign queue depth and lag, webhook deliveries pending/dead and the oldest
pending age; and the relay's delivery counters and lag histogram against a real receiver."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, select

from consentgate.bootstrap import App, build
from consentgate.config import load_settings
from consentgate.consent.ingest import EventInput
from consentgate.delivery.templates import Template
from consentgate.domain.clock import FixedClock
from consentgate.domain.timeutil import format_rfc3339
from consentgate.observability.metrics import Metrics
from consentgate.observability.store import StoreCollector
from consentgate.outbox.relay import Relay
from consentgate.outbox.sender import HttpSender
from consentgate.storage.engine import read_tx
from consentgate.storage.tables import outbox_deliveries, outbox_events
from tests.webhook_receiver import Receiver, Reply

GRANTED = ["+447911100001", "+447911100002"]
UNKNOWN = "+447911200001"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(metrics: Metrics) -> Samples:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def app(env: dict[str, str], clock: FixedClock) -> Iterator[App]:
    hooks = {
        "CONSENTGATE_WEBHOOK_RETRY_BASE_SECONDS": "0.5",
        "CONSENTGATE_WEBHOOK_RETRY_MAX_SECONDS": "2",
        "CONSENTGATE_WEBHOOK_GIVE_UP_SECONDS": "10",
        "CONSENTGATE_WEBHOOK_TIMEOUT_SECONDS": "2",
    }
    core = build(load_settings({**env, **hooks}), clock=clock)
    core.tenants.create("acme", "GB")
    yield core
    core.close()


def _grant(app: App, clock: FixedClock, n: int, phone: str) -> None:
    app.ingest.ingest(
        "acme",
        None,
        [
            EventInput(
                consent_id=f"c{n}",
                consent_type="marketing_rcs",
                status="granted",
                timestamp=format_rfc3339(clock.now() - timedelta(minutes=5)),
                phone=phone,
            )
        ],
        batch=False,
    )


def test_campaign_queue_gauges(app: App, clock: FixedClock) -> None:
    before = scrape(app.metrics)
    assert value(before, "consentgate_store_up") == 1
    assert value(before, "consentgate_campaign_queue_depth", state="queued") == 0
    assert value(before, "consentgate_campaign_queue_lag_seconds") == 0
    for n, phone in enumerate(GRANTED):
        _grant(app, clock, n, phone)
    template = app.registry.create_template(
        "acme", Template("tpl-sale", "sale", "Our sale starts now", None, False)
    )
    campaign = app.campaigns.create("acme", template, "marketing_rcs")
    audience = "phone\n" + "\n".join([*GRANTED, UNKNOWN]) + "\n"
    app.campaigns.upload("acme", "GB", campaign, iter([audience.encode()]), "text/csv")
    assert value(scrape(app.metrics), "consentgate_campaign_queue_depth", state="pending") == 3

    app.campaigns.send("acme", campaign)
    clock.advance(timedelta(seconds=42))
    after = scrape(app.metrics)
    assert value(after, "consentgate_campaign_queue_depth", state="pending") == 0
    assert value(after, "consentgate_campaign_queue_depth", state="queued") == 2
    assert value(after, "consentgate_campaign_queue_depth", state="claimed") == 0
    assert value(after, "consentgate_campaign_queue_lag_seconds") == 42
    outcome = "consentgate_campaign_recipients_total"
    assert value(after, outcome, tenant="acme", outcome="queued") == 2
    assert value(after, outcome, tenant="acme", outcome="skipped") == 1
    pre = {"tenant": "acme", "stage": "prefilter"}
    decisions = "consentgate_gate_decisions_total"
    assert value(after, decisions, **pre, result="allowed", reason="none") == 2
    assert value(after, decisions, **pre, result="denied", reason="no_consent") == 1


def test_webhook_queue_gauges_and_relay_counters(app: App, clock: FixedClock) -> None:
    # The good endpoint fails each delivery once, then takes it; the bad one always fails.
    def good_plan(_webhook_id: str, attempt: int) -> Reply:
        return Reply(500 if attempt == 1 else 204)

    with (
        Receiver(good_plan).running() as good,
        Receiver(lambda _id, _n: Reply(503)).running() as bad,
    ):
        app.endpoints.create("acme", good.url, ["consent.changed"])
        app.endpoints.create("acme", bad.url, ["consent.changed"])
        for n, phone in enumerate(GRANTED):
            _grant(app, clock, n, phone)
        clock.advance(timedelta(seconds=7))
        queued = scrape(app.metrics)
        assert (
            value(queued, "consentgate_webhook_queue_depth", tenant="acme", status="pending") == 4
        )
        assert value(queued, "consentgate_webhook_queue_depth", tenant="acme", status="dead") == 0
        assert value(queued, "consentgate_webhook_oldest_pending_seconds", tenant="acme") == 7

        sender = HttpSender(4, app.settings.webhooks.timeout_seconds)
        relay = Relay(
            app.engine,
            app.endpoints,
            clock,
            app.settings.webhooks,
            sender,
            metrics=app.metrics,
            rand=lambda: 1.0,
        )
        try:
            for _ in range(60):
                if relay.run_once() == 0:
                    clock.advance(timedelta(seconds=1))
                with read_tx(app.engine) as conn:
                    statuses = set(conn.execute(select(outbox_deliveries.c.status)).scalars())
                if statuses <= {"delivered", "dead"}:
                    break
        finally:
            sender.close()
    after = scrape(app.metrics)
    assert value(after, "consentgate_webhook_queue_depth", tenant="acme", status="pending") == 0
    assert value(after, "consentgate_webhook_queue_depth", tenant="acme", status="dead") == 2
    assert value(after, "consentgate_webhook_oldest_pending_seconds", tenant="acme") == 0

    crm = {"kind": "crm", "event_type": "consent.changed"}
    deliveries = "consentgate_webhook_deliveries_total"
    assert value(after, deliveries, **crm, outcome="delivered") == 2
    assert value(after, deliveries, **crm, outcome="dead") == 2
    # Failed attempts: the good endpoint's first ones, and every bad one but the last two.
    bad_attempts = len(bad.snapshot())
    assert bad_attempts > 2
    assert value(after, deliveries, **crm, outcome="failed") == 2 + bad_attempts - 2
    # The lag histogram holds exactly the delivered ones, event creation → delivery.
    with read_tx(app.engine) as conn:
        lags = [
            (delivered - created) / 1e6
            for delivered, created in conn.execute(
                select(outbox_deliveries.c.delivered_us, outbox_events.c.created_us)
                .join(outbox_events, outbox_events.c.seq == outbox_deliveries.c.event_seq)
                .where(outbox_deliveries.c.status == "delivered")
            )
        ]
    lag = "consentgate_webhook_delivery_lag_seconds"
    assert value(after, f"{lag}_count", kind="crm") == 2
    assert value(after, f"{lag}_sum", kind="crm") == pytest.approx(sum(lags))
    assert min(lags) >= 7


def test_an_unreachable_store_reports_down_without_failing_the_scrape(clock: FixedClock) -> None:
    metrics = Metrics()
    engine = create_engine("sqlite:////nonexistent-dir/consentgate.db")
    metrics.add_collector(StoreCollector(engine, clock))
    metrics.consent_recorded("acme", [("analytics", "granted", "api")])
    samples = scrape(metrics)
    assert value(samples, "consentgate_store_up") == 0
    assert not any(name.startswith("consentgate_campaign_queue") for name, _ in samples)
    assert any(name == "consentgate_consent_events_total" for name, _ in samples)
