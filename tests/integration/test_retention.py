"""Retention on both backends: settings, and a run that deletes only what expired (in small
batches), never a ledger row, and only for the tenant whose horizons passed."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, insert, select, update
from standardwebhooks import Webhook

from consentgate.bootstrap import App
from consentgate.consent.ingest import EventInput
from consentgate.delivery.templates import Template
from consentgate.domain.clock import FixedClock
from consentgate.domain.identity import normalise_phone
from consentgate.domain.retention import DEFAULT_POLICY, RetentionPolicy
from consentgate.domain.timeutil import format_rfc3339, to_micros
from consentgate.errors import InvalidInput, NotFound
from consentgate.ledger.verify import verify_tenant
from consentgate.privacy.retention import RetentionService
from consentgate.privacy.scrub import StorageScrubber
from consentgate.storage.engine import read_tx, write_tx
from consentgate.storage.tables import (
    campaigns,
    checkpoints,
    ledger_entries,
    ledger_nodes,
    message_events,
    messages,
    outbox_deliveries,
    outbox_events,
    webhook_receipts,
)

POLICY = {"delivery_events_days": 10, "send_decisions_days": 20, "outbox_days": 5}


def test_settings_default_validate_and_replace(core: App, tenant: dict[str, Any]) -> None:
    assert core.retention.policy("acme") == DEFAULT_POLICY == RetentionPolicy(400, 400, 30)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"outbox_days": 0}, "outbox_days"),
        ({"send_decisions_days": 3651}, "send_decisions_days"),
        ({"delivery_events_days": True}, "delivery_events_days"),
        ({"delivery_events_days": 12.5}, "delivery_events_days"),
        ({"outbox_days": "30"}, "outbox_days"),
        ({"ledger_days": 30}, "ledger_days"),
        ({"delivery_events_days": 401}, "delivery_events_days"),  # outlives its send
    ]
    for bad, field in cases:
        with pytest.raises(InvalidInput) as caught:
            core.retention.set_policy("acme", bad)
        assert caught.value.field == field
        assert core.retention.policy("acme") == DEFAULT_POLICY  # nothing changed
    assert core.retention.set_policy("acme", POLICY) == RetentionPolicy(10, 20, 5)
    assert core.retention.set_policy("acme", {"outbox_days": 7}) == RetentionPolicy(400, 400, 7)
    assert core.retention.policy("acme") == RetentionPolicy(400, 400, 7)
    with pytest.raises(NotFound):
        core.retention.policy("nobody")


def _counts(core: App, tenant: str) -> dict[str, int]:
    with read_tx(core.engine) as conn:
        return {
            t.name: int(
                conn.execute(
                    select(func.count()).select_from(t).where(t.c.tenant_id == tenant)
                ).scalar_one()
            )
            for t in (
                message_events,
                messages,
                webhook_receipts,
                outbox_events,
                outbox_deliveries,
                campaigns,
                ledger_entries,
                ledger_nodes,
                checkpoints,
            )
        }


def _batch(core: App, tenant: dict[str, Any], clock: FixedClock, tag: str) -> None:
    """One of everything retention looks at, created at the clock's current time."""
    name = tenant["tenant"]
    now = format_rfc3339(clock.now())
    for n, phone in enumerate(("+447911100011", "+447911100012")):
        core.ingest.ingest(
            name,
            "GB",
            [EventInput(f"{tag}-{n}", "marketing_rcs", "granted", now, phone=phone)],
            batch=False,
        )
    body = json.dumps(
        {
            "consent_id": f"{tag}-w",
            "phone": "+447911100013",
            "consent_type": "analytics",
            "status": "granted",
            "timestamp": now,
        }
    )
    msg_id = f"msg_{uuid.uuid4().hex}"
    signature = Webhook(tenant["webhook_secret"]).sign(msg_id, clock.now(), body)
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(clock.now().timestamp())),
        "webhook-signature": signature,
    }
    core.cmp_webhooks.handle(name, "generic", headers, body.encode())
    template = f"tpl-{tag}-{name}"
    core.registry.create_template(name, Template(template, "hello", "Hello", None, False))
    for n in range(3):  # skipped for want of consent: no provider involved
        answer = core.messages.send(
            name, normalise_phone("+447911100014", "GB"), "analytics", template, {}, f"{tag}-m{n}"
        )
        with write_tx(core.engine) as conn:  # two delivery events each (a receipt and a read)
            for kind in ("delivered", "read"):
                conn.execute(
                    insert(message_events).values(
                        id=str(uuid.uuid4()),
                        tenant_id=name,
                        message_id=answer["message_id"],
                        kind=kind,
                        at_us=to_micros(clock.now()),
                    )
                )
    done = core.campaigns.create(name, template, "personalization")  # nobody consented
    core.campaigns.upload(name, "GB", done, iter([b"phone\n+447911100015\n"]), "text/csv")
    assert core.campaigns.send(name, done)["status"] == "done"
    live = core.campaigns.create(name, template, "marketing_rcs")
    core.campaigns.upload(name, "GB", live, iter([b"phone\n+447911100011\n"]), "text/csv")
    assert core.campaigns.send(name, live)["status"] == "queued"


def test_run_deletes_only_what_expired_and_never_the_ledger(
    core: App, tenant: dict[str, Any], clock: FixedClock
) -> None:
    beta = core.tenants.create("beta", "GB")
    core.endpoints.create("acme", "https://crm.example/hook", ["consent.changed"], "crm")
    core.retention.set_policy("acme", POLICY)
    core.retention.set_policy("beta", POLICY)
    service = RetentionService(
        core.engine, core.tenants, clock, StorageScrubber(core.engine), batch_size=2
    )
    _batch(core, tenant, clock, "a")
    _batch(core, beta, clock, "a")
    with write_tx(core.engine) as conn:  # the relay delivered one event; one is still owed
        first = conn.execute(select(func.min(outbox_deliveries.c.id))).scalar_one()
        conn.execute(
            update(outbox_deliveries)
            .where(outbox_deliveries.c.id != first)
            .values(status="delivered")
        )
    a = _counts(core, "acme")
    beta_before = _counts(core, "beta")
    assert a["outbox_deliveries"] >= 2 and a["outbox_events"] > a["outbox_deliveries"]
    clock.advance(timedelta(days=12))
    _batch(core, tenant, clock, "b")
    ab = _counts(core, "acme")
    clock.advance(timedelta(days=3))

    # Day 15: batch a's delivery events (10 d) and outbox bookkeeping (5 d) are gone, not b's.
    first_run = service.run(["acme"])["tenants"]["acme"]["deleted"]
    after = _counts(core, "acme")
    assert first_run["message_events"] == a["message_events"] == 6
    assert after["message_events"] == ab["message_events"] - a["message_events"]
    assert first_run["webhook_receipts"] == 1 and after["webhook_receipts"] == 1
    assert after["outbox_deliveries"] == ab["outbox_deliveries"] - a["outbox_deliveries"] + 1
    assert after["messages"] == ab["messages"] and after["campaigns"] == ab["campaigns"]
    assert _counts(core, "beta") == beta_before  # run(["acme"]) touched acme only

    # Day 25: batch a's send decisions (20 d) go with their events, and its finished
    # campaign with its recipients; a campaign still queued stays whatever its age.
    clock.advance(timedelta(days=10))
    report = service.run()["tenants"]
    second = report["acme"]["deleted"]
    final = _counts(core, "acme")
    assert second["messages"] == a["messages"] == 3 and final["messages"] == 3
    assert second["campaigns"] == 1 and final["campaigns"] == 3
    assert second["campaign_recipients"] == 1
    assert final["message_events"] == 0  # b's are 13 days old now
    for name in ("acme", "beta"):
        counts = _counts(core, name)
        before = ab if name == "acme" else beta_before
        for ledger_table in ("ledger_entries", "ledger_nodes", "checkpoints"):
            assert counts[ledger_table] == before[ledger_table]
        with read_tx(core.engine) as conn:
            verify_tenant(conn, name, core.ledger)
    assert report["beta"]["deleted"]["messages"] == 3  # beta's horizons passed too
    rerun = service.run()["tenants"]["acme"]["deleted"]
    assert not any(rerun.values())  # nothing left to delete


def test_outbox_event_still_owed_is_kept(
    core: App, tenant: dict[str, Any], clock: FixedClock
) -> None:
    core.endpoints.create("acme", "https://crm.example/hook", ["consent.changed"], "crm")
    core.ingest.ingest(
        "acme",
        "GB",
        [
            EventInput(
                "o-1",
                "marketing_rcs",
                "granted",
                format_rfc3339(clock.now()),
                phone="+447911100021",
            )
        ],
        batch=False,
    )
    clock.advance(timedelta(days=400))
    deleted = core.retention.run(["acme"])["tenants"]["acme"]["deleted"]
    assert deleted.get("outbox_events", 0) == 0
    assert _counts(core, "acme")["outbox_deliveries"] == 1
