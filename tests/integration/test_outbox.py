"""The transactional outbox and its relay, on SQLite and PostgreSQL, against a real HTTP
receiver on loopback: retries through 500s and timeouts, per-subject order, Standard Webhooks
signatures checked with the official ``standardwebhooks`` package, atomicity with the change,
backoff → dead → replay, CMP echo suppression, erasure."""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
from sqlalchemy import func, select, update
from standardwebhooks.webhooks import Webhook

from consentgate.bootstrap import App, build
from consentgate.config import load_settings
from consentgate.consent.ingest import EventInput
from consentgate.delivery.callbacks import CallbackService
from consentgate.delivery.providers import sms
from consentgate.domain.clock import FixedClock
from consentgate.domain.identity import normalise_phone
from consentgate.domain.timeutil import format_rfc3339, parse_rfc3339, to_micros
from consentgate.errors import Conflict, NotFound
from consentgate.outbox.relay import Relay
from consentgate.outbox.sender import HttpSender, Result
from consentgate.outbox.store import erase_subject
from consentgate.storage.engine import read_tx, write_tx
from consentgate.storage.tables import crm_endpoints, outbox_deliveries, outbox_events
from tests.webhook_receiver import Receiver, Reply

PHONES = ("+447911100001", "+447911100002", "+447911100003")


@pytest.fixture
def app(env: dict[str, str], clock: FixedClock) -> Iterator[App]:
    hooks = {
        "CONSENTGATE_WEBHOOK_RETRY_BASE_SECONDS": "0.5",
        "CONSENTGATE_WEBHOOK_RETRY_MAX_SECONDS": "4",
        "CONSENTGATE_WEBHOOK_GIVE_UP_SECONDS": "20",
        "CONSENTGATE_WEBHOOK_TIMEOUT_SECONDS": "0.3",
    }
    core = build(load_settings({**env, **hooks}), clock=clock)
    core.tenants.create("acme", "GB")
    yield core
    core.close()


@contextmanager
def relay_for(
    app: App, clock: FixedClock, rand: Callable[[], float] = random.random
) -> Iterator[Relay]:
    sender = HttpSender(8, app.settings.webhooks.timeout_seconds)
    try:
        yield Relay(app.engine, app.endpoints, clock, app.settings.webhooks, sender, rand=rand)
    finally:
        sender.close()


def pending(app: App) -> int:
    with read_tx(app.engine) as conn:
        return int(
            conn.execute(
                select(func.count()).where(outbox_deliveries.c.status == "pending")
            ).scalar_one()
        )


def drain(app: App, relay: Relay, clock: FixedClock, passes: int = 200) -> None:
    """Run the relay until nothing is pending, moving the clock on whenever nothing is due."""
    for _ in range(passes):
        if relay.run_once() == 0:
            if pending(app) == 0:
                return
            clock.advance(timedelta(seconds=1))
    raise AssertionError("deliveries still pending")


def event(
    clock: FixedClock,
    consent_id: str,
    phone: str,
    status: str,
    minutes: int,
    *,
    purpose: str = "marketing_rcs",
    source: str = "api",
) -> EventInput:
    at = clock.now() - timedelta(hours=1) + timedelta(minutes=minutes)
    return EventInput(
        consent_id=consent_id,
        consent_type=purpose,
        status=status,
        timestamp=format_rfc3339(at),
        phone=phone,
        source=source,
    )


def counts(app: App) -> tuple[int, int]:
    with read_tx(app.engine) as conn:
        return (
            int(conn.execute(select(func.count()).select_from(outbox_events)).scalar_one()),
            int(conn.execute(select(func.count()).select_from(outbox_deliveries)).scalar_one()),
        )


def test_every_event_reaches_the_receiver_once_per_webhook_id_in_subject_order(
    app: App, clock: FixedClock
) -> None:
    # Each delivery: a 500, then a stall past the relay's timeout (the receiver still
    # processes it: a duplicate it must de-duplicate), then a prompt 204.
    def plan(_webhook_id: str, attempt: int) -> Reply:
        return {1: Reply(500), 2: Reply(204, stall=0.6)}.get(attempt, Reply(204))

    with Receiver(plan).running() as rx, relay_for(app, clock) as relay:
        endpoint = app.endpoints.create("acme", rx.url, ["consent.changed"])
        for round_, status in enumerate(("granted", "withdrawn", "granted")):
            app.ingest.ingest(
                "acme",
                None,
                [event(clock, f"r{round_}-s{i}", p, status, round_) for i, p in enumerate(PHONES)],
                batch=True,
            )
        # A late-arriving older event: kept in the ledger, does not change the state.
        app.ingest.ingest(
            "acme", None, [event(clock, "late", PHONES[0], "withdrawn", -30)], batch=False
        )
        drain(app, relay, clock)
    requests = rx.snapshot()

    verifier = Webhook(endpoint["secret"])
    bodies = [verifier.verify(r.body, r.headers) for r in requests]  # raises if one is forged
    unique: dict[str, dict[str, Any]] = {}
    for r, body in zip(requests, bodies, strict=True):
        assert unique.setdefault(r.webhook_id, body) == body  # same bytes on every retry
    seqs = sorted(b["data"]["ledger_seq"] for b in unique.values())
    assert seqs == list(range(10))  # every ledger event once, under exactly one webhook-id
    assert {r.webhook_id: r.attempt for r in requests if r.attempt >= 3} == dict.fromkeys(unique, 3)
    late = next(b for b in unique.values() if b["data"]["consent_id"] == "late")
    assert late["data"]["state_changed"] is False
    assert all(
        b["data"]["state_changed"] for b in unique.values() if b["data"]["consent_id"] != "late"
    )
    # Order per subject: no attempt of a subject's event before its predecessor got its 204.
    acked = {r.webhook_id: r.answered for r in requests if r.reply == Reply(204)}
    by_subject: dict[str, list[tuple[int, str]]] = {}
    for wid, body in unique.items():
        by_subject.setdefault(body["data"]["hashed_id"], []).append(
            (body["data"]["ledger_seq"], wid)
        )
    for chain in by_subject.values():
        chain.sort()
        for (_, before), (_, after) in itertools.pairwise(chain):
            first_try = min(r.order for r in requests if r.webhook_id == after)
            assert acked[before] < first_try
    with read_tx(app.engine) as conn:
        rows = conn.execute(select(outbox_deliveries.c.status, outbox_deliveries.c.attempts)).all()
    assert {(r.status, r.attempts) for r in rows} == {("delivered", 3)}


def test_outbox_rows_commit_and_roll_back_with_the_change(app: App, clock: FixedClock) -> None:
    app.endpoints.create("acme", "http://127.0.0.1:9/never", ["consent.changed"])

    def boom(_conn: Any, _results: Any) -> None:
        raise RuntimeError("fails after the ledger append, inside the transaction")

    with pytest.raises(RuntimeError):
        app.ingest.ingest(
            "acme", None, [event(clock, "a", PHONES[0], "granted", 0)], batch=False, within=boom
        )
    assert counts(app) == (0, 0)
    app.ingest.ingest(
        "acme",
        None,
        [event(clock, "a", PHONES[0], "granted", 0), event(clock, "b", PHONES[1], "granted", 0)],
        batch=True,
    )
    assert counts(app) == (2, 2)
    # An identical replay records nothing; a conflicting batch records nothing at all.
    app.ingest.ingest("acme", None, [event(clock, "a", PHONES[0], "granted", 0)], batch=False)
    with pytest.raises(Conflict):
        app.ingest.ingest(
            "acme",
            None,
            [
                event(clock, "c", PHONES[2], "granted", 1),
                event(clock, "a", PHONES[0], "withdrawn", 1),
            ],
            batch=True,
        )
    assert counts(app) == (2, 2)


def test_backoff_with_full_jitter_gives_up_then_replay_delivers_under_the_same_id(
    app: App, clock: FixedClock
) -> None:
    failing = {"on": True}

    def plan(_webhook_id: str, _attempt: int) -> Reply:
        return Reply(503) if failing["on"] else Reply(200)

    draws = iter([0.0, 1.0, 0.5, 1.0, 0.25, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    with Receiver(plan).running() as rx, relay_for(app, clock, lambda: next(draws)) as relay:
        endpoint = app.endpoints.create("acme", rx.url, ["consent.changed"])
        app.ingest.ingest("acme", None, [event(clock, "a", PHONES[0], "granted", 0)], batch=False)
        queued = clock.now()
        delays: list[float] = []
        while True:
            assert relay.run_once() == 1
            page = app.deliveries.list("acme")["deliveries"]
            delivery = page[0]
            if delivery["status"] == "dead":
                break
            due = delivery["next_attempt_at"]
            last = parse_rfc3339(delivery["last_attempt_at"])
            delays.append((parse_rfc3339(due) - last).total_seconds())
            clock.advance(parse_rfc3339(due) - clock.now())
        # base 0.5 s doubling, capped at 4 s, times the draw; the last retry is clamped to the
        # end of the 20 s give-up window, and the attempt there (failing) makes it dead.
        assert delays[:6] == [0.0, 1.0, 1.0, 4.0, 1.0, 4.0]
        assert (clock.now() - queued).total_seconds() >= 20
        assert delivery["last_status_code"] == 503
        assert delivery["last_error"] == "http 503"
        assert (
            app.deliveries.list("acme", status="dead")["deliveries"][0]["delivery_id"]
            == (delivery["delivery_id"])
        )
        failing["on"] = False
        replayed = app.deliveries.replay("acme", str(delivery["delivery_id"]))
        assert (replayed["status"], replayed["attempts"]) == ("pending", 0)
        assert replayed["webhook_id"] == delivery["webhook_id"]
        assert relay.run_once() == 1
    after = app.deliveries.get("acme", str(delivery["delivery_id"]))
    assert (after["status"], after["attempts"], after["last_status_code"]) == ("delivered", 1, 200)
    ids = {r.webhook_id for r in rx.snapshot()}
    assert ids == {delivery["webhook_id"]}
    assert rx.snapshot()[-1].reply == Reply(200)
    Webhook(endpoint["secret"]).verify(rx.snapshot()[-1].body, rx.snapshot()[-1].headers)


def _stop_callback(app: App, phone: str, sid: str) -> dict[str, int]:
    service = CallbackService(
        app.engine,
        app.tenants,
        app.links,
        app.ingest,
        app.committer,
        app.messages.providers,
        app.clock,
        app.metrics,
        outbox=app.outbox,
    )
    params = [("MessageSid", sid), ("From", phone), ("To", "+15005550006"), ("Body", " STOP ")]
    url = f"{app.settings.consent.public_url}/v1/providers/sms/callbacks"
    token = app.sandbox_secrets["twilio"]
    headers = {sms.SIGNATURE_HEADER: sms.signature(token, url, params)}
    return service.handle("sms", headers, urlencode(params).encode())


def test_cmp_endpoint_hears_stop_withdrawals_but_not_the_cmps_own_events(
    app: App, clock: FixedClock
) -> None:
    with Receiver().running() as rx, relay_for(app, clock) as relay:
        cmp = app.endpoints.create("acme", rx.url + "/cmp", ["consent.changed"], "cmp")
        crm = app.endpoints.create("acme", rx.url + "/crm", ["consent.changed"], "crm")
        app.ingest.ingest("acme", None, [event(clock, "g", PHONES[0], "granted", 0)], batch=False)
        summary = _stop_callback(app, PHONES[0], "SM" + "1" * 32)
        assert summary["withdrawals"] == 1
        drain(app, relay, clock)
    got: dict[str, list[dict[str, Any]]] = {cmp["endpoint_id"]: [], crm["endpoint_id"]: []}
    for r in rx.snapshot():
        endpoint_id = r.webhook_id.split("_", 2)[2]
        got[endpoint_id].append(json.loads(r.body)["data"])
    assert [(d["status"], d["source"]) for d in got[crm["endpoint_id"]]] == [
        ("granted", "api"),
        ("withdrawn", "inbound_keyword"),
    ]
    assert [(d["status"], d["source"]) for d in got[cmp["endpoint_id"]]] == [
        ("withdrawn", "inbound_keyword")
    ]
    assert all(PHONES[0].lstrip("+") not in r.body.decode() for r in rx.snapshot())


def test_erasing_a_subject_removes_its_events_and_deliveries(app: App, clock: FixedClock) -> None:
    app.endpoints.create("acme", "http://127.0.0.1:9/never", ["consent.changed"])
    results = app.ingest.ingest(
        "acme",
        None,
        [event(clock, f"e{i}", p, "granted", 0) for i, p in enumerate(PHONES[:2])],
        batch=True,
    )
    with read_tx(app.engine) as conn:
        hashed = app.links.hash_identifier("acme", normalise_phone(PHONES[0], "GB"))
        found = app.links.find(conn, "acme", hashed)
    assert found is not None
    with write_tx(app.engine) as conn:
        assert erase_subject(conn, "acme", found[0], [results[0].hashed_id]) == 1
    assert counts(app) == (1, 1)
    with read_tx(app.engine) as conn:
        left = conn.execute(select(outbox_events.c.body)).scalars().all()
    assert results[0].hashed_id not in left[0]
    assert results[1].hashed_id in left[0]


def test_endpoints_and_deliveries_are_walled_off_by_tenant(app: App, clock: FixedClock) -> None:
    app.tenants.create("other", "GB")
    mine = app.endpoints.create("acme", "https://crm.example/hooks", ["consent.changed"])
    app.ingest.ingest("acme", None, [event(clock, "a", PHONES[0], "granted", 0)], batch=False)
    delivery = app.deliveries.list("acme")["deliveries"][0]
    assert app.endpoints.list("other") == []
    assert app.deliveries.list("other") == {"deliveries": [], "next_cursor": None}
    with pytest.raises(NotFound):
        app.endpoints.disable("other", mine["endpoint_id"])
    with pytest.raises(NotFound):
        app.deliveries.replay("other", str(delivery["delivery_id"]))
    with pytest.raises(NotFound):
        app.deliveries.get("other", str(delivery["delivery_id"]))
    # The other tenant's events never fan out to this tenant's endpoint.
    app.ingest.ingest("other", None, [event(clock, "b", PHONES[1], "granted", 0)], batch=False)
    assert counts(app) == (2, 1)
    # Disabling: pending deliveries go dead, a replay is refused, nothing new is queued.
    app.endpoints.disable("acme", mine["endpoint_id"])
    assert app.deliveries.get("acme", str(delivery["delivery_id"]))["status"] == "dead"
    with pytest.raises(Conflict):
        app.deliveries.replay("acme", str(delivery["delivery_id"]))
    app.ingest.ingest("acme", None, [event(clock, "c", PHONES[2], "granted", 0)], batch=False)
    assert counts(app) == (3, 1)


def test_a_killed_relays_claims_are_taken_over_after_the_lease(app: App, clock: FixedClock) -> None:
    with Receiver().running() as rx, relay_for(app, clock) as relay:
        app.endpoints.create("acme", rx.url, ["consent.changed"])
        app.ingest.ingest("acme", None, [event(clock, "a", PHONES[0], "granted", 0)], batch=False)
        claimed = relay._claim()  # claimed, then the process "dies" before sending
        assert len(claimed.jobs) == 1
        assert relay.run_once() == 0  # leased: nobody else may take it yet
        clock.advance(timedelta(seconds=app.settings.webhooks.lease_seconds + 1))
        assert relay.run_once() == 1
        # The dead relay's late outcome does not overwrite the new owner's.
        relay._record(claimed.token, claimed.jobs, [Result(True, 500, "http 500")])
    delivery = app.deliveries.list("acme")["deliveries"][0]
    assert (delivery["status"], delivery["attempts"]) == ("delivered", 1)
    assert len(rx.snapshot()) == 1


def test_two_relays_share_the_queue_without_sending_anything_twice(
    app: App, clock: FixedClock
) -> None:
    subjects = [f"+4479112{n:05d}" for n in range(20)]
    with Receiver().running() as rx:
        app.endpoints.create("acme", rx.url, ["consent.changed"])
        for round_ in range(5):
            app.ingest.ingest(
                "acme",
                None,
                [
                    event(clock, f"r{round_}-{i}", p, ("granted", "withdrawn")[round_ % 2], round_)
                    for i, p in enumerate(subjects)
                ],
                batch=True,
            )
        settings = replace(app.settings.webhooks, batch=7)  # many small, interleaved claims
        stop = threading.Event()
        senders = [HttpSender(4, 2.0) for _ in range(2)]
        relays = [
            threading.Thread(
                target=Relay(app.engine, app.endpoints, clock, settings, s).run,
                args=(stop, 0.01),
            )
            for s in senders
        ]
        for t in relays:
            t.start()
        try:
            deadline = time.monotonic() + 60
            while pending(app) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            stop.set()
            for t in relays:
                t.join(timeout=30)
            for s in senders:
                s.close()
    requests = rx.snapshot()
    assert len(requests) == len({r.webhook_id for r in requests}) == 100  # each exactly once
    seen: dict[str, list[int]] = {}
    for r in requests:  # arrival order per subject is ledger order
        data = json.loads(r.body)["data"]
        seen.setdefault(data["hashed_id"], []).append(data["ledger_seq"])
    assert len(seen) == 20
    assert all(seqs == sorted(seqs) and len(seqs) == 5 for seqs in seen.values())


def test_a_stopping_relay_hands_back_what_it_has_not_sent(app: App, clock: FixedClock) -> None:
    with Receiver(lambda _id, _n: Reply(204, stall=0.3)).running() as rx:
        app.endpoints.create("acme", rx.url, ["consent.changed"])
        subjects = [f"+4479112{n:05d}" for n in range(12)]
        app.ingest.ingest(
            "acme",
            None,
            [event(clock, f"s{i}", p, "granted", 0) for i, p in enumerate(subjects)],
            batch=True,
        )
        stop = threading.Event()
        sender = HttpSender(2, 2.0)
        relay = Relay(app.engine, app.endpoints, clock, app.settings.webhooks, sender)
        worker = threading.Thread(target=relay.run, args=(stop, 0.01))
        worker.start()
        while not rx.snapshot() and worker.is_alive():
            time.sleep(0.01)
        stop.set()
        worker.join(timeout=30)
        sender.close()
    with read_tx(app.engine) as conn:
        rows = conn.execute(
            select(
                outbox_deliveries.c.status, outbox_deliveries.c.claim, outbox_deliveries.c.due_us
            )
        ).all()
    now = to_micros(clock.now())
    assert all(r.claim is None for r in rows)  # nothing left leased to a stopped relay
    delivered = [r for r in rows if r.status == "delivered"]
    assert 1 <= len(delivered) < len(rows)  # some went out, the rest were handed back
    assert all(r.due_us <= now for r in rows if r.status == "pending")


def test_an_endpoint_whose_secret_cannot_be_unwrapped_does_not_stall_the_others(
    app: App, clock: FixedClock
) -> None:
    with Receiver().running() as rx, relay_for(app, clock) as relay:
        good = app.endpoints.create("acme", rx.url + "/good", ["consent.changed"])
        bad = app.endpoints.create("acme", rx.url + "/bad", ["consent.changed"])
        with write_tx(app.engine) as conn:
            conn.execute(
                update(crm_endpoints)
                .where(crm_endpoints.c.id == bad["endpoint_id"])
                .values(secret_wrapped=b"\0" * 60)
            )
        app.ingest.ingest("acme", None, [event(clock, "a", PHONES[0], "granted", 0)], batch=False)
        assert relay.run_once() == 2
    by_endpoint = {d["endpoint_id"]: d for d in app.deliveries.list("acme")["deliveries"]}
    assert by_endpoint[good["endpoint_id"]]["status"] == "delivered"
    failed = by_endpoint[bad["endpoint_id"]]
    assert (failed["status"], failed["attempts"]) == ("pending", 1)
    assert failed["last_error"] == "endpoint secret unavailable"
    assert [r.webhook_id.rsplit("_", 2)[-2:] for r in rx.snapshot()] == [
        good["endpoint_id"].split("_")
    ]
