"""Signed CMP deliveries handled together (what the HTTP route's batcher hands over): each
answered as if alone, on both backends. Signatures by the official ``standardwebhooks``."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from sqlalchemy import func, select
from standardwebhooks import Webhook

from consentgate.bootstrap import App
from consentgate.consent.batcher import Batcher
from consentgate.consent.cmp_webhooks import Delivery, WebhookOutcome
from consentgate.domain.clock import FixedClock
from consentgate.errors import InvalidInput, Unauthenticated
from consentgate.storage.engine import read_tx
from consentgate.storage.tables import checkpoints, ledger_entries, webhook_receipts


def _event(consent_id: str, phone: str = "+447911123456", **extra: Any) -> dict[str, Any]:
    return {
        "consent_id": consent_id,
        "phone": phone,
        "consent_type": "marketing_rcs",
        "status": "granted",
        "timestamp": "2026-11-01T10:00:00Z",
        **extra,
    }


def _delivery(
    tenant: str, secret: str, clock: FixedClock, payload: Any, msg_id: str, **kw: Any
) -> Delivery:
    body = payload if isinstance(payload, str) else json.dumps(payload)
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(clock.now().timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, clock.now(), body),
    }
    return Delivery(tenant, kw.get("adapter", "generic"), headers, body.encode())


def _count(core: App, table: Any) -> int:
    with read_tx(core.engine) as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_a_batch_is_answered_delivery_by_delivery(
    core: App, tenant: dict[str, Any], clock: FixedClock
) -> None:
    beta = core.tenants.create("beta", "GB")
    secret = tenant["webhook_secret"]
    before = _count(core, checkpoints)
    batch = [
        _delivery("acme", secret, clock, _event("b-1"), "m1"),
        _delivery("acme", secret, clock, _event("b-2", phone="+447911123457"), "m2"),
        _delivery("acme", secret, clock, _event("b-3", phone="+44 12"), "m3"),  # invalid
        _delivery("acme", beta["webhook_secret"], clock, _event("b-4"), "m4"),  # forged
        _delivery("acme", secret, clock, _event("b-5", phone="+447911123458"), "m1"),  # dup id
        _delivery("beta", beta["webhook_secret"], clock, _event("b-1"), "m1"),  # other tenant
        _delivery("acme", secret, clock, _event("b-6", consent_type="nope"), "m6"),  # unknown
    ]
    answers = core.cmp_webhooks.handle_many(batch)
    assert [a.status if isinstance(a, WebhookOutcome) else type(a) for a in answers] == [
        201,
        201,
        InvalidInput,
        Unauthenticated,
        201,
        201,
        InvalidInput,
    ]
    first, dup = answers[0], answers[4]
    assert isinstance(first, WebhookOutcome) and isinstance(dup, WebhookOutcome)
    # The repeated webhook-id got the first one's answer; its own body was not recorded.
    assert dup.replayed and dup.body == first.body and not first.replayed
    assert _count(core, ledger_entries) == 3  # b-1, b-2 (acme), b-1 (beta)
    assert _count(core, webhook_receipts) == 3
    # acme's group failed at commit (the unknown purpose) and was retried one by one: two
    # checkpoints for its good deliveries; beta had its own.
    assert _count(core, checkpoints) - before == 3
    good = [
        _delivery("acme", secret, clock, _event(f"g-{i}", phone=f"+4479111234{i:02d}"), f"g{i}")
        for i in range(5)
    ]
    assert [a.status for a in core.cmp_webhooks.handle_many(good)] == [201] * 5  # type: ignore[union-attr]
    assert _count(core, checkpoints) - before == 4  # one transaction for the five
    again = core.cmp_webhooks.handle_many(batch[:2])
    assert [a.body for a in again if isinstance(a, WebhookOutcome)] == [
        first.body,
        answers[1].body,  # type: ignore[union-attr]
    ]
    assert all(isinstance(a, WebhookOutcome) and a.replayed for a in again)
    assert _count(core, ledger_entries) == 8


def test_batcher_answers_each_caller_from_one_thread(
    core: App, tenant: dict[str, Any], clock: FixedClock
) -> None:
    seen: list[int] = []

    def handle(items: Any) -> list[WebhookOutcome | Exception]:
        seen.append(len(items))
        return core.cmp_webhooks.handle_many(items)

    batcher: Batcher[Delivery, WebhookOutcome] = Batcher(handle, "test-batcher")
    secret = tenant["webhook_secret"]

    async def run() -> list[Any]:
        calls = [
            batcher.submit(_delivery("acme", secret, clock, _event(f"a-{i}"), f"a{i}"))
            for i in range(12)
        ]
        calls.append(batcher.submit(_delivery("acme", secret, clock, "{bad", "a-bad")))
        return await asyncio.gather(*calls, return_exceptions=True)

    try:
        answers = asyncio.run(run())
    finally:
        batcher.close()
    assert [a.status for a in answers[:12]] == [201] * 12
    assert isinstance(answers[12], InvalidInput) and answers[12].field == "body"
    assert sum(seen) == 13 and len(seen) < 13  # queued requests were taken together
    assert sorted(a.body["events"][0]["seq"] for a in answers[:12]) == list(range(12))


def test_tenants_on_their_own_batcher_threads(
    core: App, tenant: dict[str, Any], clock: FixedClock
) -> None:
    """deliver(): each tenant's deliveries go to one batcher thread (so they can share a
    transaction), different tenants' may commit side by side; every caller gets its own."""
    beta = core.tenants.create("beta", "GB")
    secrets_ = {"acme": tenant["webhook_secret"], "beta": beta["webhook_secret"]}

    async def run() -> list[WebhookOutcome]:
        return await asyncio.gather(
            *(
                core.cmp_webhooks.deliver(
                    _delivery(name, secrets_[name], clock, _event(f"{name}-{i}"), f"{name}{i}")
                )
                for i in range(10)
                for name in ("acme", "beta")
            )
        )

    answers = asyncio.run(run())
    assert [a.status for a in answers] == [201] * 20
    for first in (0, 1):  # acme's answers, then beta's (they alternate)
        seqs = sorted(a.body["events"][0]["seq"] for a in answers[first::2])
        assert seqs == list(range(10))  # each tenant's own ledger, each event once
