"""The ``subject.erased`` notice (GDPR Art. 17(2)/19) on SQLite and PostgreSQL, against a real
HTTP receiver on loopback: subscribed CRM and CMP endpoints each get it once, signed (checked
with ``standardwebhooks``), with every hashed id of the subject and nothing that links it to
the erasure leaf; with no subscriber nothing is stored; once every delivery is finished
(delivered, dead after the give-up window, or dead because its endpoint was disabled) the
stored body is purged, no row holds the hashed ids any more, and a replay is a 409 problem."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from consentgate.api.app import create_app
from consentgate.bootstrap import App
from consentgate.crypto.keystore import KeyKind
from consentgate.domain.clock import FixedClock
from consentgate.errors import Conflict
from consentgate.outbox.events import SUBJECT_ERASED
from consentgate.storage.engine import read_tx
from consentgate.storage.tables import erasures, outbox_events
from consentgate.tenants.service import Scope
from tests.integration.privacy_scan import rows_containing
from tests.integration.test_outbox import PHONES, drain, event, relay_for
from tests.integration.test_outbox import app as app  # the fixture, reused
from tests.webhook_receiver import Receiver, Reply


def _subject(app: App, clock: FixedClock) -> list[str]:
    """PHONES[0] under two salt versions (two hashed ids), PHONES[1] as a bystander."""
    [first] = app.ingest.ingest(
        "acme", None, [event(clock, "n-1", PHONES[0], "granted", 0)], batch=False
    )
    app.keystore.rotate("acme", KeyKind.SALT)
    [second] = app.ingest.ingest(
        "acme",
        None,
        [event(clock, "n-2", PHONES[0], "withdrawn", 1, purpose="analytics")],
        batch=False,
    )
    app.ingest.ingest("acme", None, [event(clock, "b-1", PHONES[1], "granted", 0)], batch=False)
    assert first.hashed_id != second.hashed_id
    return sorted({first.hashed_id, second.hashed_id})


def _notices(app: App) -> list[Any]:
    with read_tx(app.engine) as conn:
        return list(
            conn.execute(
                select(outbox_events.c.order_key, outbox_events.c.body).where(
                    outbox_events.c.event_type == SUBJECT_ERASED
                )
            ).all()
        )


Post = Callable[[str], httpx.Response]


@pytest.fixture
def post(app: App) -> Post:
    """POST through the real FastAPI app, in process (no lifespan: the test runs the relay)."""
    key = app.tenants.add_key("acme", frozenset({Scope.ADMIN}))
    api = create_app(app)

    async def call(path: str) -> httpx.Response:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=api),
            base_url="http://consentgate.test",
            headers={"authorization": f"Bearer {key.api_key}"},
        ) as client:
            return await client.post(path)

    return lambda path: asyncio.run(call(path))


def test_crm_and_cmp_endpoints_each_get_one_signed_notice_then_its_body_is_purged(
    app: App, clock: FixedClock, post: Post
) -> None:
    hashes = _subject(app, clock)
    with Receiver().running() as rx, relay_for(app, clock) as relay:
        crm = app.endpoints.create("acme", rx.url + "/crm", ["consent.changed", SUBJECT_ERASED])
        cmp = app.endpoints.create("acme", rx.url + "/cmp", [SUBJECT_ERASED], "cmp")
        bystander = app.endpoints.create("acme", rx.url + "/other", ["consent.changed"])
        app.ingest.ingest("acme", None, [event(clock, "b-2", PHONES[2], "granted", 2)], batch=False)
        drain(app, relay, clock)  # a bystander's consent event, before the erasure
        before = len(rx.snapshot())
        answer = post(f"/v1/subjects/{hashes[-1]}/erase")
        assert answer.status_code == 200, answer.text
        assert answer.json()["notified_endpoints"] == 2
        # Until delivered, the notice is the one row that holds the hashed ids.
        assert rows_containing(app.engine, hashes) == {"outbox_events": ["body"]}
        with read_tx(app.engine) as conn:
            ref = conn.execute(select(erasures.c.subject_ref)).scalar_one()
        [(order_key, _)] = _notices(app)
        assert order_key != ref and ref not in order_key
        drain(app, relay, clock)
    requests = rx.snapshot()[before:]
    by_endpoint: dict[str, list[dict[str, Any]]] = {}
    for endpoint in (crm, cmp):
        verifier = Webhook(endpoint["secret"])
        by_endpoint[endpoint["endpoint_id"]] = [
            verifier.verify(r.body, r.headers)
            for r in requests
            if r.webhook_id.endswith("_" + endpoint["endpoint_id"])
        ]
    assert len(requests) == 2  # nothing for the endpoint that did not subscribe
    assert not any(r.webhook_id.endswith(bystander["endpoint_id"]) for r in requests)
    for got in by_endpoint.values():
        [body] = got
        assert body["type"] == SUBJECT_ERASED
        assert body["data"] == {"hashed_ids": hashes}  # all salt versions, nothing else
    assert all(ref not in r.body.decode() for r in requests)
    # Delivered everywhere: the body is purged in the transaction of the last outcome.
    assert rows_containing(app.engine, hashes) == {}
    page = app.deliveries.list("acme", status="delivered")["deliveries"]
    notices = [d for d in page if d["event_type"] == SUBJECT_ERASED]
    assert len(notices) == 2
    assert all(d["event"]["data"] == {"purged": True} for d in notices)
    replay = post(f"/v1/crm/deliveries/{notices[0]['delivery_id']}/replay")
    assert replay.status_code == 409
    assert replay.headers["content-type"].startswith("application/problem+json")
    assert "purged" in replay.json()["detail"]
    # An ordinary delivery still replays.
    other = next(d for d in page if d["event_type"] != SUBJECT_ERASED)
    assert post(f"/v1/crm/deliveries/{other['delivery_id']}/replay").status_code == 200


def test_with_no_subscriber_no_notice_is_stored(app: App, clock: FixedClock) -> None:
    hashes = _subject(app, clock)
    app.endpoints.create("acme", "http://127.0.0.1:9/crm", ["consent.changed"])
    # Subscribed, but disabled: it receives nothing, so it is no reason to keep the ids.
    gone = app.endpoints.create("acme", "http://127.0.0.1:9/old", [SUBJECT_ERASED], "cmp")
    app.endpoints.disable("acme", gone["endpoint_id"])
    report = app.erasure.erase("acme", hashes[0])
    assert report.notified_endpoints == 0
    assert _notices(app) == []
    assert rows_containing(app.engine, hashes) == {}


def test_a_notice_given_up_on_is_purged_and_cannot_be_replayed(app: App, clock: FixedClock) -> None:
    hashes = _subject(app, clock)
    with Receiver(lambda _id, _n: Reply(500)).running() as rx, relay_for(app, clock) as relay:
        app.endpoints.create("acme", rx.url, [SUBJECT_ERASED])
        assert app.erasure.erase("acme", hashes[0]).notified_endpoints == 1
        assert relay.run_once() == 1  # a failure: retried later, the body is kept meanwhile
        assert rows_containing(app.engine, hashes) == {"outbox_events": ["body"]}
        drain(app, relay, clock)  # 500s until the 20 s give-up window is over
    [delivery] = app.deliveries.list("acme")["deliveries"]
    assert delivery["status"] == "dead" and delivery["attempts"] >= 3
    assert {json.loads(r.body)["data"]["hashed_ids"] == hashes for r in rx.snapshot()} == {True}
    assert rows_containing(app.engine, hashes) == {}
    with pytest.raises(Conflict, match="purged"):
        app.deliveries.replay("acme", str(delivery["delivery_id"]))


def test_disabling_the_last_endpoint_owed_the_notice_purges_it(app: App, clock: FixedClock) -> None:
    hashes = _subject(app, clock)
    with Receiver().running() as rx, relay_for(app, clock) as relay:
        crm = app.endpoints.create("acme", rx.url + "/crm", [SUBJECT_ERASED])
        down = app.endpoints.create("acme", "http://127.0.0.1:9/cmp", [SUBJECT_ERASED], "cmp")
        assert app.erasure.erase("acme", hashes[0]).notified_endpoints == 2
        assert relay.run_once() == 2  # the crm one is delivered, the other fails (refused)
        # One delivery still pending: the body must stay for it.
        assert rows_containing(app.engine, hashes) == {"outbox_events": ["body"]}
        clock.advance(timedelta(seconds=1))
        app.endpoints.disable("acme", down["endpoint_id"])
    assert [json.loads(r.body)["data"] for r in rx.snapshot()] == [{"hashed_ids": hashes}]
    assert rx.snapshot()[0].webhook_id.endswith(crm["endpoint_id"])
    assert rows_containing(app.engine, hashes) == {}
    [(_, body)] = _notices(app)
    assert json.loads(body)["data"] == {"purged": True}
