"""The batched campaign dispatcher against the sandbox carrier over real HTTP (its own uvicorn
server on loopback, lean RBM front included), on SQLite and PostgreSQL: one send per
recipient, withdrawals after the pre-filter, a worker that died mid-batch, the provider rate
limit, and revocation of undelivered messages when consent is withdrawn."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text

from consentgate.bootstrap import App, build
from consentgate.config import load_settings
from consentgate.consent.ingest import EventInput
from consentgate.crypto.envelope import SUITE_X25519
from consentgate.delivery.registry import AppKey
from consentgate.delivery.settle import Recipient
from consentgate.delivery.templates import Template
from consentgate.domain.clock import FixedClock
from consentgate.domain.identity import Identifier, IdentifierKind
from consentgate.errors import InvalidInput
from consentgate.sandbox import create_sandbox
from consentgate.sandbox.fastpath import RbmFastPath
from consentgate.storage.tables import (
    campaign_recipients,
    message_events,
    messages,
    outbox_events,
    revocable_messages,
)
from tests.integration.test_sandbox_providers import Served

RBM_TOKEN = "rbm-" + uuid.uuid4().hex
TWILIO_TOKEN = "twilio-" + uuid.uuid4().hex
PURPOSE = "marketing_rcs"


@pytest.fixture
def carrier() -> Iterator[str]:
    with Served(RbmFastPath(create_sandbox(None, RBM_TOKEN, TWILIO_TOKEN))) as served:
        yield served.url


def _app(env: dict[str, str], carrier: str, clock: FixedClock, **extra: str) -> App:
    return build(
        load_settings(
            {
                **env,
                "CONSENTGATE_SANDBOX_URL": carrier,
                "CONSENTGATE_SANDBOX_RBM_TOKEN": RBM_TOKEN,
                "CONSENTGATE_SANDBOX_TWILIO_TOKEN": TWILIO_TOKEN,
                **extra,
            }
        ),
        clock=clock,
    )


@pytest.fixture
def app(env: dict[str, str], carrier: str, clock: FixedClock) -> Iterator[App]:
    built = _app(env, carrier, clock)
    built.tenants.create("acme", "GB")
    yield built
    built.close()


def _phones(n: int, prefix: str = "+4479111") -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(n)]


def _consent(app: App, phones: list[str], status: str, clock: FixedClock, tag: str) -> None:
    stamp = (clock.now() - timedelta(minutes=1 if status == "withdrawn" else 60)).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    for start in range(0, len(phones), 1000):
        events = [
            EventInput(
                consent_id=f"{tag}-{start + i}",
                consent_type=PURPOSE,
                status=status,
                timestamp=stamp,
                source="web",
                phone=p,
            )
            for i, p in enumerate(phones[start : start + 1000])
        ]
        app.ingest.ingest("acme", "GB", events, batch=True)


def _devices(carrier: str, phones: list[str]) -> None:
    devices = [{"phone": p, "rcs": True, "native_e2ee": True} for p in phones]
    httpx.put(f"{carrier}/devices", json={"devices": devices}, timeout=30).raise_for_status()


def _carried(carrier: str) -> list[dict[str, Any]]:
    messages_: list[dict[str, Any]] = httpx.get(f"{carrier}/messages", timeout=30).json()[
        "messages"
    ]
    return messages_


def _campaign(app: App, phones: list[str]) -> str:
    template = app.registry.create_template(
        "acme", Template(str(uuid.uuid4()), "sale", "Our sale starts now", None, False)
    )
    cid = app.campaigns.create("acme", template, PURPOSE)
    body = ("phone\n" + "\n".join(phones) + "\n").encode()
    assert app.campaigns.upload("acme", "GB", cid, iter([body]), "text/csv")["accepted"] == len(
        phones
    )
    app.campaigns.send("acme", cid)
    return cid


def _drain(app: App) -> None:
    for _ in range(100):
        if app.campaigns.dispatch_once() == 0:
            return
    raise AssertionError("the queue did not drain")


def test_each_recipient_once_with_a_withdrawal_after_the_prefilter(
    app: App, carrier: str, clock: FixedClock
) -> None:
    granted, unknown = _phones(250), _phones(30, "+4479112")
    late = granted[-20:]
    _devices(carrier, granted + unknown)
    _consent(app, granted, "granted", clock, "g")
    cid = _campaign(app, granted + unknown)
    _consent(app, late, "withdrawn", clock, "w")  # after the pre-filter, before any send
    _drain(app)

    status = app.campaigns.status("acme", cid)
    assert status["status"] == "done"
    assert (status["sent"], status["skipped"]) == (230, 50)
    assert status["by_reason"] == {"no_consent": 30, "withdrawn": 20}
    carried = [m["to"] for m in _carried(carrier)]
    assert sorted(carried) == sorted(granted[:-20])  # each once, none withdrawn or unknown
    with app.engine.connect() as conn:
        decided = conn.execute(
            select(messages.c.action, messages.c.reason, func.count())
            .where(messages.c.campaign_id == cid)
            .group_by(messages.c.action, messages.c.reason)
        ).all()
        events = conn.execute(
            select(func.count()).where(outbox_events.c.event_type == "message.decided")
        ).scalar_one()
        sealed = conn.execute(
            select(func.count()).where(
                campaign_recipients.c.campaign_id == cid,
                campaign_recipients.c.sealed.is_not(None),
            )
        ).scalar_one()
        held = conn.execute(select(func.count()).select_from(revocable_messages)).scalar_one()
    assert sorted(decided) == [("sent", None, 230), ("skipped", "withdrawn", 20)]
    assert events == 250  # one message.decided per decision, in the decision's transaction
    assert sealed == 0  # every number purged from the queue once its recipient completed
    assert held == 230  # kept sealed, revocable until delivered


def _crash_after_sending(app: App, limit: int) -> int:
    """One pass of the dispatcher up to its sends, then nothing recorded: a worker killed
    after the provider took the messages."""
    d = app.campaigns._dispatcher
    claimed = d._claim(limit)
    items = [Recipient(r, r.attempts + 1, key=f"campaign:{r.campaign_id}:{r.seq}") for r in claimed]
    template = d._template("acme", claimed[0].template_id, PURPOSE)
    assert template is not None
    live = [i for i in items if d._unseal("acme", i)]
    d._hash("acme", live)
    live = d._take_keys("acme", live, template)
    d._resolve("acme", live)
    d._check_consent("acme", live, PURPOSE)
    d._plan_and_send("acme", live, template, None)
    return len(live)


def test_a_worker_killed_after_sending_never_sends_twice(
    app: App, carrier: str, clock: FixedClock
) -> None:
    phones = _phones(120)
    _devices(carrier, phones)
    _consent(app, phones, "granted", clock, "g")
    cid = _campaign(app, phones)
    assert _crash_after_sending(app, 80) == 80
    assert len(_carried(carrier)) == 80
    with app.engine.connect() as conn:
        pending = dict(
            conn.execute(
                select(messages.c.idempotency_key, messages.c.id).where(
                    messages.c.campaign_id == cid, messages.c.status == "pending"
                )
            ).all()
        )
    assert len(pending) == 80
    assert app.campaigns.dispatch_once() == 40  # the claimed 80 wait for their lease
    clock.advance(timedelta(seconds=61))  # the lease and the message claims go stale
    _drain(app)

    assert app.campaigns.status("acme", cid)["sent"] == 120
    carried = _carried(carrier)
    assert sorted(m["to"] for m in carried) == sorted(phones)  # everyone once, nobody twice
    with app.engine.connect() as conn:
        after = dict(
            conn.execute(
                select(messages.c.idempotency_key, messages.c.id).where(
                    messages.c.campaign_id == cid
                )
            ).all()
        )
    assert len(after) == 120
    assert all(after[key] == mid for key, mid in pending.items())  # taken over, same ids
    assert {m["provider_message_id"] for m in carried} == set(after.values())


def test_the_provider_rate_limit_bounds_sends(
    env: dict[str, str], carrier: str, clock: FixedClock, backend: str
) -> None:
    if backend != "sqlite":
        pytest.skip("the limiter is per process and storage-agnostic: one engine is enough")
    rate = 50.0
    app = _app(env, carrier, clock, CONSENTGATE_PROVIDER_RATE_RBM=str(rate))
    try:
        app.tenants.create("acme", "GB")
        phones = _phones(400)
        _devices(carrier, phones)
        _consent(app, phones, "granted", clock, "g")
        _campaign(app, phones)
        started = time.monotonic()
        while time.monotonic() - started < 1.0:
            app.campaigns.dispatch_once()
        elapsed = time.monotonic() - started
        sent = len(_carried(carrier))
        burst = max(1.0, rate / 10)
        # Never more than the bucket allows over the elapsed time; and the limiter does not
        # starve the dispatcher either.
        assert sent <= burst + rate * elapsed + 1, (sent, elapsed)
        assert sent >= 0.5 * rate * min(elapsed, 1.0), (sent, elapsed)
    finally:
        app.close()


def test_a_withdrawal_revokes_undelivered_messages_and_skips_queued_recipients(
    app: App, carrier: str, clock: FixedClock
) -> None:
    delivered, undelivered, queued, bystander = _phones(4)
    _devices(carrier, [delivered, undelivered, queued, bystander])
    _consent(app, [delivered, undelivered, queued, bystander], "granted", clock, "g")
    _campaign(app, [delivered])
    _drain(app)
    httpx.post(f"{carrier}/deliveries/flush", timeout=10).raise_for_status()
    _campaign(app, [undelivered, bystander])
    _drain(app)
    waiting = _campaign(app, [queued])  # queued, not dispatched yet
    assert app.campaigns.dispatch_once(0) == 0  # the revoker alone: nothing withdrawn yet

    clock.advance(timedelta(minutes=2))
    _consent(app, [delivered, undelivered, queued], "withdrawn", clock, "w")
    revoker = app.campaigns._dispatcher.revoker
    assert revoker is not None
    assert revoker.run_once() > 0

    carried = {m["to"]: m for m in _carried(carrier)}
    assert carried[undelivered]["status"] == "revoked"
    assert carried[delivered]["status"] == "delivered"
    assert carried[bystander]["status"] == "accepted"  # consent still holds: left alone
    assert queued not in carried
    with app.engine.connect() as conn:
        rows = {
            r.provider_message_id: r
            for r in conn.execute(
                select(messages.c.id, messages.c.status, messages.c.provider_message_id)
            )
        }
        kinds = {(r.message_id, r.kind) for r in conn.execute(select(message_events))}
        waiting_row = conn.execute(
            select(campaign_recipients).where(campaign_recipients.c.campaign_id == waiting)
        ).one()
        held = conn.execute(select(revocable_messages.c.message_id)).scalars().all()
    revoked = rows[carried[undelivered]["provider_message_id"]]
    late = rows[carried[delivered]["provider_message_id"]]
    kept = rows[carried[bystander]["provider_message_id"]]
    assert revoked.status == "revoked" and (revoked.id, "revoked") in kinds
    assert late.status == "sent" and (late.id, "revoke_late") in kinds
    assert (waiting_row.state, waiting_row.action, waiting_row.reason) == (
        "done",
        "skipped",
        "withdrawn",
    )
    assert waiting_row.sealed is None and waiting_row.wrapped_key is None
    assert held == [kept.id]  # numbers kept only while a message may still be revoked

    httpx.post(f"{carrier}/deliveries/flush", timeout=10).raise_for_status()
    carried = {m["to"]: m for m in _carried(carrier)}
    assert carried[undelivered]["status"] == "revoked"  # never delivered
    _drain(app)
    assert app.campaigns.status("acme", waiting)["status"] == "done"
    assert queued not in {m["to"] for m in _carried(carrier)}


def test_the_revoker_reads_each_ledger_once(app: App, clock: FixedClock) -> None:
    """The cursor follows the ledger: a tenant created after the migration starts at seq 0,
    and every pass ends at the tree size, so no leaf is read twice."""
    _consent(app, _phones(3), "granted", clock, "g")
    _consent(app, _phones(1), "withdrawn", clock, "w")
    revoker = app.campaigns._dispatcher.revoker
    assert revoker is not None
    revoker.run_once()
    revoker.run_once()
    with app.engine.connect() as conn:
        cursor = conn.execute(
            text("SELECT next_seq FROM revocation_cursors WHERE tenant_id = 'acme'")
        ).scalar_one()
        size = conn.execute(
            text("SELECT tree_size FROM ledger_heads WHERE tenant_id = 'acme'")
        ).scalar_one()
    assert cursor == size == 4
    assert os.environ.get("CONSENTGATE_PROVIDER_RATE_RBM") is None  # no limit leaked in


def test_revocation_tables_match_the_migration(app: App) -> None:
    """What 0008 creates is what storage/tables.py declares (both engines)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from consentgate.storage.tables import metadata

    with app.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert [d for d in diff if "revoca" in repr(d)] == []


def test_a_campaign_template_with_pii_tokens_is_refused(app: App) -> None:
    """An audience carries numbers only: nothing could fill {{first_name}} per recipient."""
    template = app.registry.create_template(
        "acme", Template(str(uuid.uuid4()), "t", "Hi {{first_name}}", None, False)
    )
    with pytest.raises(InvalidInput) as refused:
        app.campaigns.create("acme", template, PURPOSE)
    assert refused.value.field == "template_id"


def test_a_recipient_that_cannot_be_composed_is_settled_not_retried(
    app: App, carrier: str, clock: FixedClock
) -> None:
    """A stored device key the envelope cannot use (corrupted: 7 bytes, not an X25519 key):
    that recipient is settled as skipped (ambiguous), its claim released; the rest of the
    batch is sent; nothing stays pending for a worker to trip over again."""
    phones = _phones(3)
    devices = [{"phone": p, "rcs": True, "native_e2ee": False} for p in phones]
    httpx.put(f"{carrier}/devices", json={"devices": devices}, timeout=30).raise_for_status()
    _consent(app, phones, "granted", clock, "g")
    hashed = app.links.hash_identifier("acme", Identifier(IdentifierKind.PHONE, phones[0]))
    app.registry.register_device(
        "acme",
        hashed,
        rcs=True,
        native_e2ee=False,
        key=AppKey("broken", SUITE_X25519, b"\x00" * 7),
        expires_at=None,
    )
    cid = _campaign(app, phones)
    _drain(app)
    status = app.campaigns.status("acme", cid)
    assert (status["status"], status["fallback"], status["skipped"]) == ("done", 2, 1)
    assert status["by_reason"]["ambiguous"] == 1
    assert sorted(m["to"] for m in _carried(carrier)) == sorted(phones[1:])
    with app.engine.connect() as conn:
        pending = conn.execute(
            select(func.count()).where(messages.c.status == "pending")
        ).scalar_one()
    assert pending == 0


def test_the_lean_rbm_front_answers_like_the_app(carrier: str) -> None:
    """agentMessages.create through RbmFastPath keeps the RBM wire format's answers."""
    phone = "+447911100000"
    _devices(carrier, [phone])
    url = f"{carrier}/rbm/v1/phones/{phone}/agentMessages"
    body = {"contentMessage": {"text": "hi"}}
    auth = {"Authorization": "Bearer t"}
    mid = str(uuid.uuid4())
    with httpx.Client(timeout=10) as http:
        assert http.post(url, params={"messageId": mid}, json=body).status_code == 401
        first = http.post(url, params={"messageId": mid}, json=body, headers=auth)
        assert first.status_code == 200 and first.json()["name"].endswith(mid)
        again = http.post(url, params={"messageId": mid}, json=body, headers=auth)
        assert again.status_code == 409 and again.json()["error"]["status"] == "ALREADY_EXISTS"
        assert http.post(url, json=body, headers=auth).status_code == 400  # no messageId
        bad = http.post(url, params={"messageId": mid}, content=b"{", headers=auth)
        assert bad.status_code == 400 and bad.json()["error"]["status"] == "INVALID_ARGUMENT"
        unknown = http.post(
            f"{carrier}/rbm/v1/phones/+447911100001/agentMessages",
            params={"messageId": str(uuid.uuid4())},
            json=body,
            headers=auth,
        )
        assert unknown.status_code == 404 and unknown.json()["error"]["status"] == "NOT_FOUND"
        notphone = http.post(
            f"{carrier}/rbm/v1/phones/12345/agentMessages",
            params={"messageId": str(uuid.uuid4())},
            json=body,
            headers=auth,
        )
        assert notphone.status_code == 400
    assert [m["provider_message_id"] for m in _carried(carrier)] == [mid]
