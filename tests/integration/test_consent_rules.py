"""The consent rules of DESIGN §3 through ingest and the read view, on SQLite and PostgreSQL."""

from __future__ import annotations

import random
from datetime import timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import func, select

from consentgate.bootstrap import App
from consentgate.consent.ingest import EventInput, IngestResult
from consentgate.domain.clock import FixedClock
from consentgate.domain.consent import EffectiveStatus
from consentgate.domain.identity import normalise_phone
from consentgate.domain.timeutil import format_rfc3339, parse_rfc3339, to_micros
from consentgate.errors import Conflict, InvalidInput, NotFound
from consentgate.ledger.leaf import parse_leaf
from consentgate.storage.tables import consent_state, subject_links

PHONE = "07911 123456"
PHONE_E164 = "+447911123456"
OTHER_PHONE = "+447912345678"


class Events:
    """Builds events with timestamps relative to the test clock."""

    def __init__(self, clock: FixedClock) -> None:
        self.clock = clock

    def at(self, delta: timedelta = timedelta(0)) -> str:
        return format_rfc3339(self.clock.now() + delta)

    def __call__(
        self,
        consent_id: str,
        status: str = "granted",
        delta: timedelta = -timedelta(hours=1),
        **fields: Any,
    ) -> EventInput:
        fields.setdefault("consent_type", "marketing_rcs")
        if not {"phone", "email", "hashed_id"} & fields.keys():
            fields["phone"] = PHONE
        fields.setdefault("timestamp", self.at(delta))
        return EventInput(consent_id=consent_id, status=status, **fields)


@pytest.fixture
def ev(clock: FixedClock) -> Events:
    return Events(clock)


def ingest(core: App, *events: EventInput, tenant: str = "acme") -> list[IngestResult]:
    return core.ingest.ingest(tenant, "GB", list(events), batch=len(events) > 1)


def one(core: App, event: EventInput, tenant: str = "acme") -> IngestResult:
    [result] = core.ingest.ingest(tenant, "GB", [event], batch=False)
    return result


def tree_size(core: App, tenant: str = "acme") -> int:
    with core.engine.connect() as conn:
        return core.ledger.tree_size(conn, tenant)


def count(core: App, table: Any) -> int:
    with core.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def state(core: App, phone: str = PHONE, tenant: str = "acme") -> dict[str, Any]:
    return core.queries.by_identifier(tenant, normalise_phone(phone, "GB")).consents


def nothing_recorded(core: App, tenant: str = "acme") -> None:
    assert tree_size(core, tenant) == 0
    assert count(core, subject_links) == 0
    assert count(core, consent_state) == 0
    with pytest.raises(NotFound):
        state(core, tenant=tenant)


# --- the latest-state rule ------------------------------------------------------------------


def test_latest_timestamp_wins(core: App, tenant: dict[str, Any], ev: Events) -> None:
    one(core, ev("c1", "granted", -timedelta(hours=3)))
    assert state(core)["marketing_rcs"].status is EffectiveStatus.GRANTED
    r2 = one(core, ev("c2", "withdrawn", -timedelta(hours=2)))
    view = state(core)["marketing_rcs"]
    assert view.status is EffectiveStatus.WITHDRAWN
    assert view.event_seq == r2.seq == 1
    assert view.effective_at == parse_rfc3339(ev.at(-timedelta(hours=2)))
    assert view.expires_at is None
    r3 = one(core, ev("c3", "granted", -timedelta(hours=1)))
    view = state(core)["marketing_rcs"]
    assert view.status is EffectiveStatus.GRANTED
    assert view.event_seq == r3.seq == 2
    # Purposes are independent of one another.
    one(core, ev("c4", "withdrawn", consent_type="analytics"))
    consents = state(core)
    assert consents["marketing_rcs"].status is EffectiveStatus.GRANTED
    assert consents["analytics"].status is EffectiveStatus.WITHDRAWN
    assert set(consents) == {"marketing_rcs", "analytics"}


def test_equal_timestamps_withdrawn_wins(core: App, tenant: dict[str, Any], ev: Events) -> None:
    t = -timedelta(minutes=10)
    # Grant first, then withdrawal at the same instant (the withdrawal's id sorts lower, so
    # only the status can make it win).
    one(core, ev("z-grant", "granted", t))
    w = one(core, ev("a-withdraw", "withdrawn", t))
    assert state(core)["marketing_rcs"].status is EffectiveStatus.WITHDRAWN
    # Another grant at that same instant does not win either.
    one(core, ev("zz-grant", "granted", t))
    view = state(core)["marketing_rcs"]
    assert view.status is EffectiveStatus.WITHDRAWN
    assert view.event_seq == w.seq
    # Withdrawal first, grant second: same outcome for another subject.
    w2 = one(core, ev("b-withdraw", "withdrawn", t, phone=OTHER_PHONE))
    one(core, ev("y-grant", "granted", t, phone=OTHER_PHONE))
    assert state(core, OTHER_PHONE)["marketing_rcs"].status is EffectiveStatus.WITHDRAWN
    assert state(core, OTHER_PHONE)["marketing_rcs"].event_seq == w2.seq


def test_equal_timestamps_inside_one_batch(core: App, tenant: dict[str, Any], ev: Events) -> None:
    t = -timedelta(minutes=1)
    results = ingest(core, ev("z1", "granted", t), ev("a1", "withdrawn", t), ev("z2", "granted", t))
    view = state(core)["marketing_rcs"]
    assert view.status is EffectiveStatus.WITHDRAWN
    assert view.event_seq == results[1].seq


def test_late_older_event_is_recorded_but_does_not_change_state(
    core: App, tenant: dict[str, Any], ev: Events
) -> None:
    newer = one(core, ev("newer", "withdrawn", -timedelta(hours=1)))
    late = one(core, ev("older", "granted", -timedelta(days=2)))
    assert late.created
    assert late.seq == newer.seq + 1
    view = state(core)["marketing_rcs"]
    assert view.status is EffectiveStatus.WITHDRAWN
    assert view.event_seq == newer.seq
    assert tree_size(core) == 2
    history = core.queries.history("acme", newer.hashed_id)
    assert [h["consent_id"] for h in history] == ["newer", "older"]
    assert [h["seq"] for h in history] == [newer.seq, late.seq]
    assert history[1]["status"] == "granted"
    assert history[1]["timestamp"] == ev.at(-timedelta(days=2))
    with core.engine.connect() as conn:
        leaf, _ = core.ledger.entry(conn, "acme", late.seq)
    assert parse_leaf(leaf)["consent_id"] == "older"


def test_future_events_beyond_skew_rejected_and_nothing_written(
    core: App, tenant: dict[str, Any], ev: Events
) -> None:
    with pytest.raises(InvalidInput) as info:
        one(core, ev("f1", delta=timedelta(minutes=5, seconds=1)))
    assert info.value.field == "timestamp"
    nothing_recorded(core)
    with pytest.raises(InvalidInput) as info:
        ingest(core, ev("f2", delta=-timedelta(hours=1)), ev("f3", delta=timedelta(days=1)))
    assert info.value.field == "events[1].timestamp"
    nothing_recorded(core)
    # Exactly at the tolerance is accepted (clock skew between the CMP and us).
    r = one(core, ev("f4", delta=timedelta(minutes=5)))
    assert r.created
    assert tree_size(core) == 1
    # The tolerance moves with the clock.
    with pytest.raises(InvalidInput):
        one(core, ev("f5", delta=timedelta(minutes=6)))
    assert tree_size(core) == 1


def test_unknown_consent_type_rejected_naming_field(
    core: App, tenant: dict[str, Any], ev: Events
) -> None:
    with pytest.raises(InvalidInput) as info:
        one(core, ev("u1", consent_type="telepathy"))
    assert info.value.field == "consent_type"
    assert "marketing_rcs" in info.value.detail  # the error lists what is allowed
    nothing_recorded(core)
    with pytest.raises(InvalidInput) as info:
        ingest(core, ev("u2"), ev("u3", consent_type="Marketing_RCS"), ev("u4"))
    assert info.value.field == "events[1].consent_type"
    nothing_recorded(core)


INVALID_FIELDS: list[tuple[dict[str, Any], str]] = [
    ({"status": "revoked"}, "status"),
    ({"status": "GRANTED"}, "status"),
    ({"source": "fax"}, "source"),
    ({"consent_id": ""}, "consent_id"),
    ({"consent_id": "x" * 201}, "consent_id"),
    ({"timestamp": "2026-11-27T13:00:00"}, "timestamp"),
    ({"phone": "07700 900123"}, "phone"),
    ({"email": "not-an-email"}, "email"),
    ({"hashed_id": "ABC"}, "hashed_id"),
    ({"email": "a@example.com", "phone": PHONE}, "phone"),
]


def test_invalid_fields_are_named_and_nothing_written(
    core: App, tenant: dict[str, Any], ev: Events
) -> None:
    for changes, field in INVALID_FIELDS:
        base = {"consent_id": "v1", "status": "granted", **changes}
        consent_id, status = base.pop("consent_id"), base.pop("status")
        with pytest.raises(InvalidInput) as info:
            one(core, ev(consent_id, status, **base))
        assert info.value.field == field, changes
        with pytest.raises(InvalidInput) as info:
            ingest(core, ev("ok-1"), ev("ok-2"), ev(consent_id, status, **base))
        assert info.value.field == f"events[2].{field}", changes
    nothing_recorded(core)


def test_event_with_no_identifier_rejected(core: App, tenant: dict[str, Any], ev: Events) -> None:
    bare = EventInput("n1", "marketing_rcs", "granted", ev.at(-timedelta(hours=1)))
    with pytest.raises(InvalidInput) as info:
        one(core, bare)
    assert info.value.field == "phone"
    assert PHONE_E164 not in repr(ev("r", phone=PHONE_E164))  # events never print the number
    nothing_recorded(core)


# --- expiry ---------------------------------------------------------------------------------


def test_grant_expires_at_the_purpose_max_age(
    core: App, tenant: dict[str, Any], ev: Events, clock: FixedClock
) -> None:
    granted_at = parse_rfc3339(ev.at(-timedelta(hours=1)))
    one(core, ev("g1", delta=-timedelta(hours=1)))
    one(core, ev("g2", delta=-timedelta(hours=1), consent_type="transactional_rcs"))
    max_age = timedelta(days=730)  # marketing_rcs in the default catalogue
    view = state(core)["marketing_rcs"]
    assert view.status is EffectiveStatus.GRANTED
    assert view.expires_at == granted_at + max_age
    assert state(core)["transactional_rcs"].expires_at is None
    clock.advance(max_age - timedelta(hours=1) - timedelta(seconds=1))
    assert state(core)["marketing_rcs"].status is EffectiveStatus.GRANTED
    clock.advance(timedelta(seconds=1))  # now == granted_at + max_age
    consents = state(core)
    assert consents["marketing_rcs"].status is EffectiveStatus.EXPIRED
    assert consents["marketing_rcs"].expires_at == granted_at + max_age
    assert consents["transactional_rcs"].status is EffectiveStatus.GRANTED
    # The by-hash view agrees with the by-phone view.
    hashed = core.queries.by_identifier("acme", normalise_phone(PHONE, "GB")).hashed_id
    assert core.queries.by_hashed_id("acme", hashed).consents == consents
    # A fresh grant starts a new period.
    one(core, ev("g3", delta=-timedelta(seconds=1)))
    view = state(core)["marketing_rcs"]
    assert view.status is EffectiveStatus.GRANTED
    assert view.expires_at == clock.now() - timedelta(seconds=1) + max_age


def test_set_purpose_moves_expiry_of_existing_grants(
    core: App, tenant: dict[str, Any], ev: Events, clock: FixedClock
) -> None:
    granted_at = parse_rfc3339(ev.at(-timedelta(days=1)))
    one(core, ev("s1", delta=-timedelta(days=1)))
    one(core, ev("s2", "withdrawn", delta=-timedelta(days=1), phone=OTHER_PHONE))

    def stored_expiry() -> dict[str, int | None]:
        with core.engine.connect() as conn:
            rows = conn.execute(
                select(consent_state.c.status, consent_state.c.expires_us).where(
                    consent_state.c.consent_type == "marketing_rcs"
                )
            )
            return {r.status: r.expires_us for r in rows}

    assert stored_expiry() == {
        "granted": to_micros(granted_at + timedelta(days=730)),
        "withdrawn": None,
    }
    core.tenants.set_purpose("acme", "marketing_rcs", 30, "shorter")
    assert state(core)["marketing_rcs"].expires_at == granted_at + timedelta(days=30)
    assert stored_expiry() == {
        "granted": to_micros(granted_at + timedelta(days=30)),
        "withdrawn": None,
    }
    assert state(core, OTHER_PHONE)["marketing_rcs"].expires_at is None
    clock.advance(timedelta(days=29))
    assert state(core)["marketing_rcs"].status is EffectiveStatus.EXPIRED
    core.tenants.set_purpose("acme", "marketing_rcs", None, "forever")
    view = state(core)["marketing_rcs"]
    assert view.status is EffectiveStatus.GRANTED
    assert view.expires_at is None
    assert stored_expiry() == {"granted": None, "withdrawn": None}
    # A new purpose is usable at once, and other tenants' catalogues are untouched.
    core.tenants.set_purpose("acme", "newsletter_rcs", 7, "weekly")
    one(core, ev("s3", consent_type="newsletter_rcs", delta=-timedelta(hours=1)))
    assert state(core)["newsletter_rcs"].expires_at == clock.now() - timedelta(hours=1) + timedelta(
        days=7
    )
    assert {p.name for p in core.tenants.list_purposes("acme")} >= {"newsletter_rcs"}


# --- idempotency ----------------------------------------------------------------------------


def test_identical_replay_returns_the_recorded_event(
    core: App, tenant: dict[str, Any], ev: Events, clock: FixedClock
) -> None:
    event = ev("idem-1", cmp_version="cmp-2.1", jurisdiction="GB", device={"rcs": True})
    first = one(core, event)
    assert first.created
    clock.advance(timedelta(minutes=3))  # a retry a little later
    replay = one(core, event)
    assert not replay.created
    assert (replay.seq, replay.event_id, replay.leaf_hash, replay.hashed_id) == (
        first.seq,
        first.event_id,
        first.leaf_hash,
        first.hashed_id,
    )
    # The same event spelled differently is still the same event: national vs international
    # number, another offset for the same instant, the subject named by its hashed id.
    instant = parse_rfc3339(event.timestamp)
    for variant in (
        EventInput(**{**_fields(event), "phone": PHONE_E164}),
        EventInput(
            **{
                **_fields(event),
                "timestamp": instant.astimezone(timezone(timedelta(hours=1))).isoformat(),
            }
        ),
        EventInput(**{**_fields(event), "phone": None, "hashed_id": first.hashed_id}),
    ):
        again = one(core, variant)
        assert not again.created
        assert (again.seq, again.event_id) == (first.seq, first.event_id)
    assert tree_size(core) == 1
    assert len(core.queries.history("acme", first.hashed_id)) == 1


def _fields(event: EventInput) -> dict[str, Any]:
    return {name: getattr(event, name) for name in EventInput.__dataclass_fields__}


CONFLICTING_CHANGES: list[dict[str, Any]] = [
    {"status": "withdrawn"},
    {"delta": -timedelta(hours=2)},
    {"consent_type": "analytics"},
    {"source": "web"},
    {"cmp_version": "cmp-2.2"},
    {"cmp_version": None},
    {"policy_version": "p9"},
    {"jurisdiction": "FR"},
    {"device": {"rcs": False}},
    {"phone": OTHER_PHONE},
]


def test_same_consent_id_other_content_is_a_conflict(
    core: App, tenant: dict[str, Any], ev: Events
) -> None:
    first = one(core, ev("dup", cmp_version="cmp-2.1", device={"rcs": True}))
    before = state(core)
    for changes in CONFLICTING_CHANGES:
        fields = {"cmp_version": "cmp-2.1", "device": {"rcs": True}, **changes}
        status = fields.pop("status", "granted")
        with pytest.raises(Conflict) as info:
            one(core, ev("dup", status, **fields))
        assert info.value.field == "consent_id", changes
    assert tree_size(core) == 1
    assert state(core) == before
    with pytest.raises(NotFound):
        state(core, OTHER_PHONE)
    assert [h["event_id"] for h in core.queries.history("acme", first.hashed_id)] == [
        first.event_id
    ]


def test_conflict_in_a_batch_writes_nothing(core: App, tenant: dict[str, Any], ev: Events) -> None:
    one(core, ev("known", "granted"))
    with pytest.raises(Conflict) as info:
        ingest(core, ev("new-1", phone=OTHER_PHONE), ev("known", "withdrawn"), ev("new-2"))
    assert info.value.field == "events[1].consent_id"
    assert tree_size(core) == 1
    with pytest.raises(NotFound):
        state(core, OTHER_PHONE)
    # A batch that merely replays a known event alongside new ones records only the new ones.
    results = ingest(core, ev("new-1", phone=OTHER_PHONE), ev("known", "granted"))
    assert [r.created for r in results] == [True, False]
    assert results[1].seq == 0
    assert results[0].seq == 1
    assert tree_size(core) == 2


# --- batches --------------------------------------------------------------------------------


def test_batch_is_all_or_nothing(core: App, tenant: dict[str, Any], ev: Events) -> None:
    with pytest.raises(InvalidInput) as info:
        ingest(core, ev("b1"), ev("b2", phone=OTHER_PHONE), ev("b3", phone="07700 900999"))
    assert info.value.field == "events[2].phone"
    assert "900999" not in str(info.value)
    nothing_recorded(core)
    results = ingest(core, ev("b1"), ev("b2", phone=OTHER_PHONE), ev("b3", "withdrawn"))
    assert [r.seq for r in results] == [0, 1, 2]
    assert all(r.created for r in results)
    assert len({r.event_id for r in results}) == 3
    assert results[0].hashed_id == results[2].hashed_id != results[1].hashed_id
    assert tree_size(core) == 3


def test_duplicate_consent_id_inside_one_batch(
    core: App, tenant: dict[str, Any], ev: Events
) -> None:
    same = ev("twice")
    results = ingest(core, same, ev("other", phone=OTHER_PHONE), same)
    assert [r.created for r in results] == [True, True, False]
    assert results[2].seq == results[0].seq
    assert results[2].event_id == results[0].event_id
    assert results[2].leaf_hash == results[0].leaf_hash
    assert tree_size(core) == 2
    with pytest.raises(Conflict) as info:
        ingest(core, ev("again"), ev("again", "withdrawn"))
    assert info.value.field == "events[1].consent_id"
    assert tree_size(core) == 2


# --- naming the person by hashed id ---------------------------------------------------------


def test_hashed_id_input_for_a_known_subject(core: App, tenant: dict[str, Any], ev: Events) -> None:
    first = one(core, ev("h1", "granted", -timedelta(hours=2)))
    second = one(core, ev("h2", "withdrawn", -timedelta(hours=1), hashed_id=first.hashed_id))
    assert second.created
    assert second.hashed_id == first.hashed_id
    assert state(core)["marketing_rcs"].status is EffectiveStatus.WITHDRAWN
    history = core.queries.history("acme", first.hashed_id)
    assert [h["consent_id"] for h in history] == ["h1", "h2"]
    assert history[0]["subject_ref"] == history[1]["subject_ref"]
    assert count(core, subject_links) == 1


def test_unknown_hashed_id_rejected(core: App, tenant: dict[str, Any], ev: Events) -> None:
    unknown = "ab" * 32
    with pytest.raises(InvalidInput) as info:
        one(core, ev("x1", hashed_id=unknown))
    assert info.value.field == "hashed_id"
    with pytest.raises(InvalidInput) as info:
        ingest(core, ev("x2"), ev("x3", hashed_id=unknown))
    assert info.value.field == "events[1].hashed_id"
    nothing_recorded(core)
    with pytest.raises(NotFound):
        core.queries.by_hashed_id("acme", unknown)


# --- order independence end to end ---------------------------------------------------------


def _twelve_events(ev: Events) -> list[EventInput]:
    phones = [PHONE, OTHER_PHONE, "+1 650 253 0000"]
    instants = [-timedelta(hours=3), -timedelta(hours=2), -timedelta(hours=2)]
    statuses = ["granted", "withdrawn"]
    rng = random.Random(20261127)
    events = []
    for i in range(12):
        events.append(
            ev(
                f"perm-{i:02d}",
                statuses[rng.randrange(2)],
                instants[rng.randrange(3)],
                phone=phones[i % 3],
                consent_type=("marketing_rcs", "analytics")[(i // 3) % 2],
            )
        )
    return events


def test_same_events_in_any_order_give_the_same_state(core: App, ev: Events) -> None:
    events = _twelve_events(ev)
    shuffled = list(events)
    random.Random(3).shuffle(shuffled)
    orders = {"p0": events, "p1": list(reversed(events)), "p2": shuffled}
    for name, order in orders.items():
        core.tenants.create(name, "GB")
        if name == "p2":
            ingest(core, *order, tenant=name)  # one batch
        else:
            for event in order:
                one(core, event, tenant=name)

    def observed(tenant: str) -> dict[tuple[str, str], tuple[Any, ...]]:
        seen = {}
        with core.engine.connect() as conn:
            for phone in {e.phone for e in events}:
                assert phone is not None
                consents = core.queries.by_identifier(tenant, normalise_phone(phone, "GB")).consents
                for purpose, view in consents.items():
                    leaf, _ = core.ledger.entry(conn, tenant, view.event_seq)
                    seen[(phone, purpose)] = (
                        view.status,
                        view.effective_at,
                        view.expires_at,
                        parse_leaf(leaf)["consent_id"],
                    )
        return seen

    reference = observed("p0")
    assert len(reference) == 6
    assert {v[0] for v in reference.values()} <= {
        EffectiveStatus.GRANTED,
        EffectiveStatus.WITHDRAWN,
    }
    assert observed("p1") == reference
    assert observed("p2") == reference
    assert {tree_size(core, t) for t in orders} == {12}
