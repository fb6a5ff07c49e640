"""Analytics on SQLite and PostgreSQL: k-suppression at exactly k-1 and k, DP answers that
are noisy and paid for, a budget that refuses (and charges nothing), refills each month and
holds under concurrent queries, join tokens per month, conversions and attribution, settings
validation and tenant isolation.

Subjects are created through real ingest (so ``subject_links`` and hashed ids are real);
sends are written as ``messages`` / ``message_events`` rows at chosen instants, which is what
the analytics read (the send path itself is exercised over HTTP in the e2e tests).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, insert, select

from consentgate.analytics.budget import BudgetStore
from consentgate.analytics.rules import MICRO
from consentgate.bootstrap import App
from consentgate.consent.ingest import EventInput
from consentgate.delivery.templates import Template
from consentgate.domain.clock import FixedClock
from consentgate.domain.identity import normalise_phone
from consentgate.domain.timeutil import format_rfc3339, to_micros
from consentgate.errors import BudgetExhausted, InvalidInput, NotFound
from consentgate.storage.engine import read_tx, write_tx
from consentgate.storage.tables import (
    analytics_budget,
    analytics_conversions,
    analytics_queries,
    message_events,
    messages,
)

NOW = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(NOW)


Subject = tuple[str, str]  # (subject_ref, hashed_id)


def make_subjects(core: App, tenant: str, n: int, start: int = 0) -> list[Subject]:
    phones = [f"+4479111{start + i:05d}" for i in range(n)]
    when = format_rfc3339(core.clock.now() - timedelta(days=30))
    core.ingest.ingest(
        tenant,
        "GB",
        [
            EventInput(
                consent_id=f"cmp-{tenant}-{start + i}",
                consent_type="marketing_rcs",
                status="granted",
                timestamp=when,
                phone=p,
            )
            for i, p in enumerate(phones)
        ],
        batch=True,
    )
    out = []
    with read_tx(core.engine) as conn:
        for p in phones:
            found = core.links.find(
                conn, tenant, core.links.hash_identifier(tenant, normalise_phone(p, "GB"))
            )
            assert found is not None
            out.append(found)
    return out


def make_template(core: App, tenant: str, name: str = "promo") -> str:
    template_id = str(uuid.uuid4())
    return core.registry.create_template(tenant, Template(template_id, name, "Hello", None, False))


def make_campaign(core: App, tenant: str, template_id: str) -> str:
    return core.campaigns.create(tenant, template_id, "marketing_rcs")


def record_sends(
    core: App,
    tenant: str,
    subjects: Iterable[Subject],
    template_id: str,
    *,
    at: datetime = NOW - timedelta(hours=1),
    campaign_id: str | None = None,
    mode: str = "secure_link",
    action: str = "sent",
    receipts: tuple[str, ...] = (),
) -> None:
    """One message per subject, as the send path stores it, with the given receipts."""
    with write_tx(core.engine) as conn:
        for ref, _ in subjects:
            mid = str(uuid.uuid4())
            conn.execute(
                insert(messages).values(
                    id=mid,
                    tenant_id=tenant,
                    idempotency_key=mid,
                    request_hash=b"\0" * 32,
                    subject_ref=ref,
                    consent_type="marketing_rcs",
                    template_id=template_id,
                    campaign_id=campaign_id,
                    action=action,
                    mode=None if action == "skipped" else mode,
                    status="sent",
                    created_us=to_micros(at),
                    updated_us=to_micros(at),
                )
            )
            for kind in receipts:
                conn.execute(
                    insert(message_events).values(
                        id=str(uuid.uuid4()),
                        tenant_id=tenant,
                        message_id=mid,
                        kind=kind,
                        at_us=to_micros(at) + 1,
                    )
                )


def by_key(rows: list[dict[str, Any]], field: str) -> dict[Any, dict[str, Any]]:
    return {r[field]: r for r in rows}


def spent(core: App, tenant: str, month: str) -> float:
    with read_tx(core.engine) as conn:
        value = conn.execute(
            select(analytics_budget.c.spent_micro).where(
                analytics_budget.c.tenant_id == tenant, analytics_budget.c.month == month
            )
        ).scalar()
    return 0.0 if value is None else int(value) / MICRO


def recorded_queries(core: App, tenant: str) -> int:
    with read_tx(core.engine) as conn:
        return int(
            conn.execute(
                select(func.count())
                .select_from(analytics_queries)
                .where(analytics_queries.c.tenant_id == tenant)
            ).scalar_one()
        )


# -- k-suppression ----------------------------------------------------------------------------


def test_default_k_suppresses_exactly_below_ten(core: App, tenant: dict[str, Any]) -> None:
    people = make_subjects(core, "acme", 19)
    shown, hidden = make_template(core, "acme", "ten"), make_template(core, "acme", "nine")
    record_sends(core, "acme", people[:10], shown, receipts=("delivered", "read"))
    record_sends(core, "acme", people[10:], hidden, receipts=("delivered",))
    answer = core.analytics.engagement("acme", group_by="template_id")
    assert answer["k_threshold"] == 10
    rows = by_key(answer["rows"], "template_id")
    assert rows[shown] == {
        "template_id": shown,
        "suppressed": False,
        "subjects": 10,
        "sent": 10,
        "delivered": 10,
        "read": 10,
    }
    assert rows[hidden] == {
        "template_id": hidden,
        "suppressed": True,
        "subjects": None,
        "sent": None,
        "delivered": None,
        "read": None,
    }


def test_k_counts_distinct_subjects_not_messages(core: App, tenant: dict[str, Any]) -> None:
    core.analytics.put_settings("acme", 3, 10.0, False)
    people = make_subjects(core, "acme", 5)
    template = make_template(core, "acme")
    # "app_layer": 2 subjects with 3 messages each (6 sends, still only 2 people).
    for _ in range(3):
        record_sends(core, "acme", people[:2], template, mode="app_layer")
    # "sms_redacted": exactly 3 subjects, one read; skipped messages never count.
    record_sends(core, "acme", people[2:], template, mode="sms_redacted")
    record_sends(core, "acme", people[2:3], template, mode="sms_redacted", receipts=("read",))
    record_sends(core, "acme", people, template, action="skipped")
    rows = by_key(core.analytics.engagement("acme", group_by="mode")["rows"], "mode")
    assert set(rows) == {"app_layer", "sms_redacted"}
    assert rows["app_layer"]["suppressed"] is True and rows["app_layer"]["sent"] is None
    assert rows["sms_redacted"] == {
        "mode": "sms_redacted",
        "suppressed": False,
        "subjects": 3,
        "sent": 4,
        "delivered": 1,  # a read receipt implies delivery
        "read": 1,
    }


def test_grouping_by_day_campaign_and_window(core: App, tenant: dict[str, Any]) -> None:
    core.analytics.put_settings("acme", 2, 10.0, False)
    people = make_subjects(core, "acme", 4)
    template = make_template(core, "acme")
    campaign = make_campaign(core, "acme", template)
    day1, day2 = NOW - timedelta(days=2), NOW - timedelta(days=1)
    record_sends(core, "acme", people, template, at=day1, campaign_id=campaign)
    record_sends(core, "acme", people[:2], template, at=day2, campaign_id=campaign)
    record_sends(core, "acme", people, template, at=day2)  # not in the campaign
    answer = core.analytics.engagement("acme", campaign_id=campaign, group_by="day,campaign")
    assert [(r["day"], r["campaign"], r["sent"]) for r in answer["rows"]] == [
        ("2026-11-13", campaign, 4),
        ("2026-11-14", campaign, 2),
    ]
    window = core.analytics.engagement(
        "acme", group_by="day", from_="2026-11-14T00:00:00Z", to="2026-11-15T00:00:00Z"
    )
    assert [(r["day"], r["sent"], r["subjects"]) for r in window["rows"]] == [("2026-11-14", 6, 4)]
    everything = core.analytics.engagement("acme")
    assert everything["rows"] == [
        {"suppressed": False, "subjects": 4, "sent": 10, "delivered": 0, "read": 0}
    ]


BAD_QUERIES: list[tuple[dict[str, Any], str]] = [
    ({"group_by": "day,phone"}, "group_by"),
    ({"group_by": "subject_ref"}, "group_by"),
    ({"group_by": "mode,mode"}, "group_by"),
    ({"group_by": "mode,"}, "group_by"),
    ({"from_": "2026-11-14T00:00:00Z", "to": "2026-11-13T00:00:00Z"}, "to"),
    ({"from_": "yesterday"}, "from"),
    ({"max_per_subject": 2}, "max_per_subject"),
    ({"dp_epsilon": 0.0}, "dp_epsilon"),
    ({"dp_epsilon": float("nan")}, "dp_epsilon"),
    ({"dp_epsilon": 1.0, "max_per_subject": 0}, "max_per_subject"),
    ({"dp_epsilon": 1.0, "group_by": "day"}, "from"),
    (
        {
            "dp_epsilon": 1.0,
            "group_by": "day",
            "from_": "2025-01-01T00:00:00Z",
            "to": "2026-11-01T00:00:00Z",
        },
        "to",
    ),
]


def test_bad_queries_are_refused_and_charge_nothing(core: App, tenant: dict[str, Any]) -> None:
    # One database for every case (they share nothing but must all leave it untouched).
    for kwargs, field in BAD_QUERIES:
        with pytest.raises(InvalidInput) as info:
            core.analytics.engagement("acme", **kwargs)
        assert info.value.field == field, kwargs
    assert spent(core, "acme", "2026-11") == 0.0
    assert recorded_queries(core, "acme") == 0


def test_campaigns_are_per_tenant(core: App, tenant: dict[str, Any]) -> None:
    core.tenants.create("other", "GB")
    theirs = make_campaign(core, "other", make_template(core, "other"))
    with pytest.raises(NotFound):
        core.analytics.engagement("acme", campaign_id=theirs)
    with pytest.raises(NotFound):
        core.analytics.join_tokens("acme", "2026-11", theirs)
    with pytest.raises(NotFound):
        core.analytics.attribution("acme", theirs)


def test_tenants_see_only_their_own_sends(core: App, tenant: dict[str, Any]) -> None:
    core.tenants.create("other", "GB")
    for name in ("acme", "other"):
        core.analytics.put_settings(name, 2, 1.0, False)
    mine = make_subjects(core, "acme", 3)
    theirs = make_subjects(core, "other", 5, start=100)
    record_sends(core, "acme", mine, make_template(core, "acme"))
    record_sends(core, "other", theirs, make_template(core, "other"))
    assert [r["sent"] for r in core.analytics.engagement("acme")["rows"]] == [3]
    assert [r["sent"] for r in core.analytics.engagement("other")["rows"]] == [5]
    core.analytics.engagement("acme", dp_epsilon=1.0)
    with pytest.raises(BudgetExhausted):
        core.analytics.engagement("acme", dp_epsilon=0.5)
    core.analytics.engagement("other", dp_epsilon=1.0)  # a budget of its own
    assert spent(core, "acme", "2026-11") == spent(core, "other", "2026-11") == 1.0


# -- differential privacy ---------------------------------------------------------------------


def test_dp_answers_are_noisy_and_each_is_charged(core: App, tenant: dict[str, Any]) -> None:
    core.analytics.put_settings("acme", 2, 10.0, False)
    people = make_subjects(core, "acme", 12)
    record_sends(core, "acme", people, make_template(core, "acme"), mode="app_layer")
    truth = (12, 12, 0, 0)
    answers = []
    for _ in range(20):
        answer = core.analytics.engagement("acme", group_by="mode", dp_epsilon=0.5)
        answers.append(answer)
    # Every delivery mode is answered (empty ones too): which groups exist is not released.
    assert [r["mode"] for r in answers[0]["rows"]] == [
        "native_e2ee",
        "app_layer",
        "in_app",
        "secure_link",
        "sms_redacted",
    ]
    dp = answers[0]["dp"]
    assert dp["mechanism"] == "discrete_laplace"
    assert dp["epsilon"] == 0.5
    assert dp["l1_sensitivity"] == 4  # subjects, sent, delivered, read × 1 message/subject
    assert dp["scale"] == pytest.approx(8.0)
    released = [
        tuple(r[m] for m in ("subjects", "sent", "delivered", "read"))
        for a in answers
        for r in a["rows"]
        if r["mode"] == "app_layer" and not r["suppressed"]
    ]
    # P(one draw is exact) ≈ 0.06 at scale 8: twenty exact answers would mean no noise.
    assert any(values != truth for values in released)
    assert spent(core, "acme", "2026-11") == 10.0  # 20 × 0.5, exactly
    assert recorded_queries(core, "acme") == 20
    assert answers[-1]["dp"]["budget"] == {"month": "2026-11", "spent": 10.0, "remaining": 0.0}
    with pytest.raises(BudgetExhausted):
        core.analytics.engagement("acme", dp_epsilon=0.001)


def test_dp_by_day_covers_every_day_of_the_window(core: App, tenant: dict[str, Any]) -> None:
    people = make_subjects(core, "acme", 3)
    record_sends(core, "acme", people, make_template(core, "acme"))
    answer = core.analytics.engagement(
        "acme",
        group_by="day",
        from_="2026-11-10T00:00:00Z",
        to="2026-11-15T12:00:00Z",
        dp_epsilon=1.0,
        max_per_subject=2,
    )
    assert [r["day"] for r in answer["rows"]] == [f"2026-11-{d}" for d in range(10, 16)]
    assert answer["dp"]["l1_sensitivity"] == 8
    assert answer["dp"]["max_per_subject"] == 2
    for row in answer["rows"]:
        assert set(row) == {"day", "suppressed", "subjects", "sent", "delivered", "read"}
        assert (row["sent"] is None) == row["suppressed"]


def test_budget_refuses_without_charging_and_refills_next_month(
    core: App, tenant: dict[str, Any], clock: FixedClock
) -> None:
    core.analytics.put_settings("acme", 10, 1.0, False)
    core.analytics.engagement("acme", dp_epsilon=0.6)
    with pytest.raises(BudgetExhausted) as info:
        core.analytics.engagement("acme", dp_epsilon=0.6)
    assert info.value.status == 429
    assert info.value.extra == {"epsilon_requested": 0.6, "epsilon_remaining": 0.4}
    assert spent(core, "acme", "2026-11") == 0.6
    assert recorded_queries(core, "acme") == 1
    core.analytics.engagement("acme", dp_epsilon=0.4)  # exactly the rest
    assert core.analytics.settings("acme")["budget"] == {
        "month": "2026-11",
        "spent": 1.0,
        "remaining": 0.0,
    }
    with pytest.raises(BudgetExhausted):
        core.analytics.attribution(
            "acme", make_campaign(core, "acme", make_template(core, "acme")), "2026-11", 0.1
        )
    clock.advance(timedelta(days=16))  # 2026-12-01T12:00Z
    answer = core.analytics.engagement("acme", dp_epsilon=1.0)
    assert answer["dp"]["budget"] == {"month": "2026-12", "spent": 1.0, "remaining": 0.0}
    assert spent(core, "acme", "2026-11") == 1.0  # last month's record stays
    assert recorded_queries(core, "acme") == 3


def test_a_smaller_budget_applies_to_what_was_already_spent(
    core: App, tenant: dict[str, Any]
) -> None:
    core.analytics.engagement("acme", dp_epsilon=3.0)
    view = core.analytics.put_settings("acme", 10, 2.0, True)
    assert view["budget"] == {"month": "2026-11", "spent": 3.0, "remaining": 0.0}
    with pytest.raises(BudgetExhausted):
        core.analytics.engagement("acme", dp_epsilon=0.1)
    with pytest.raises(InvalidInput) as info:  # require_dp: no unnoised answers at all
        core.analytics.engagement("acme")
    assert info.value.field == "dp_epsilon"


def test_concurrent_queries_never_overspend(core: App, tenant: dict[str, Any]) -> None:
    core.analytics.put_settings("acme", 10, 1.0, False)
    make_subjects(core, "acme", 2)
    start = threading.Barrier(8)
    outcomes: list[str] = []
    lock = threading.Lock()

    def query() -> None:
        start.wait()
        try:
            core.analytics.engagement("acme", group_by="mode", dp_epsilon=0.3)
            outcome = "ok"
        except BudgetExhausted:
            outcome = "refused"
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=query) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["ok"] * 3 + ["refused"] * 5
    assert spent(core, "acme", "2026-11") == pytest.approx(0.9)
    assert recorded_queries(core, "acme") == 3


def test_racing_charges_spend_exactly_the_budget(core: App, tenant: dict[str, Any]) -> None:
    """The charge alone, raced by more threads than the pool has connections."""
    core.analytics.put_settings("acme", 10, 1.0, False)
    store = BudgetStore(core.engine)
    start = threading.Barrier(16)
    refused: list[int] = []

    def charge(i: int) -> None:
        start.wait()
        try:
            store.charge("acme", "2026-11", 100_000, "test", {"i": i}, 0)
        except BudgetExhausted:
            refused.append(i)

    threads = [threading.Thread(target=charge, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(refused) == 6
    assert spent(core, "acme", "2026-11") == 1.0
    assert recorded_queries(core, "acme") == 10


def test_analytics_tables_match_the_migration(core: App) -> None:
    """What 0006 creates is what storage/tables.py declares (both engines)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from consentgate.storage.tables import metadata

    with core.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert [d for d in diff if "analytics_" in repr(d)] == []


# -- settings ---------------------------------------------------------------------------------


def test_settings_defaults_and_validation(core: App, tenant: dict[str, Any]) -> None:
    assert core.analytics.settings("acme") == {
        "k_threshold": 10,
        "monthly_epsilon": 10.0,
        "require_dp": False,
        "budget": {"month": "2026-11", "spent": 0.0, "remaining": 10.0},
    }
    for k, eps, field in [
        (1, 1.0, "k_threshold"),
        (1001, 1.0, "k_threshold"),
        (5, -0.1, "monthly_epsilon"),
        (5, 100.5, "monthly_epsilon"),
        (5, float("inf"), "monthly_epsilon"),
    ]:
        with pytest.raises(InvalidInput) as info:
            core.analytics.put_settings("acme", k, eps, False)
        assert info.value.field == field
    assert core.analytics.settings("acme")["k_threshold"] == 10
    assert core.analytics.put_settings("acme", 25, 0.3, False)["monthly_epsilon"] == 0.3


# -- join tokens, conversions, attribution ----------------------------------------------------


def test_join_tokens_are_stable_within_a_month_and_unlinkable_across(
    core: App, tenant: dict[str, Any], clock: FixedClock
) -> None:
    core.analytics.put_settings("acme", 3, 10.0, False)
    people = make_subjects(core, "acme", 4)
    template = make_template(core, "acme")
    first, second = make_campaign(core, "acme", template), make_campaign(core, "acme", template)
    record_sends(core, "acme", people, template, campaign_id=first)
    record_sends(core, "acme", people[:3], template, campaign_id=second)
    october = NOW - timedelta(days=30)
    record_sends(core, "acme", people, template, campaign_id=first, at=october)

    november = core.analytics.join_tokens("acme", "2026-11", first)
    assert november["count"] == 4 and november["suppressed"] is False
    tokens = november["tokens"]
    assert tokens == sorted(tokens) and len(set(tokens)) == 4
    assert all(len(t) == 43 for t in tokens)
    # Same people, same month, another campaign: the same tokens.
    assert set(core.analytics.join_tokens("acme", "2026-11", second)["tokens"]) < set(tokens)
    # Same people, another month: nothing in common.
    assert not set(core.analytics.join_tokens("acme", "2026-10", first)["tokens"]) & set(tokens)
    # No hashed id (in any encoding) and no subject_ref in the export.
    export = repr(november)
    for ref, hashed_id in people:
        assert ref not in export and hashed_id not in export
        assert hashed_id.upper() not in export
    # Keys live in the store: a second App on the same data gives the same tokens, and a
    # month passing makes a new key while old months keep working.
    clock.advance(timedelta(days=20))
    assert core.analytics.join_tokens("acme", "2026-11", first)["tokens"] == tokens
    assert core.analytics.join_tokens("acme", "2026-12", first)["suppressed"] is True


def test_join_tokens_below_k_are_suppressed(core: App, tenant: dict[str, Any]) -> None:
    core.analytics.put_settings("acme", 3, 10.0, False)
    people = make_subjects(core, "acme", 3)
    template = make_template(core, "acme")
    campaign = make_campaign(core, "acme", template)
    record_sends(core, "acme", people[:2], template, campaign_id=campaign)
    assert core.analytics.join_tokens("acme", "2026-11", campaign) == {
        "month": "2026-11",
        "campaign_id": campaign,
        "k_threshold": 3,
        "suppressed": True,
        "count": None,
        "tokens": None,
    }
    record_sends(core, "acme", people[2:], template, campaign_id=campaign)
    assert core.analytics.join_tokens("acme", "2026-11", campaign)["count"] == 3


def test_conversions_are_attributed_with_k(core: App, tenant: dict[str, Any]) -> None:
    core.analytics.put_settings("acme", 3, 10.0, False)
    people = make_subjects(core, "acme", 6)
    template = make_template(core, "acme")
    campaign = make_campaign(core, "acme", template)
    record_sends(core, "acme", people, template, campaign_id=campaign)
    tokens = core.analytics.join_tokens("acme", "2026-11", campaign)["tokens"]

    stored = core.analytics.record_conversions("acme", "2026-11", [tokens[0], tokens[1], tokens[1]])
    assert stored == {"month": "2026-11", "received": 3, "recorded": 2, "duplicates": 1}
    assert core.analytics.attribution("acme", campaign)["rows"] == [
        {"month": "2026-11", "suppressed": True, "subjects": None, "conversions": None}
    ]
    replay = core.analytics.record_conversions("acme", "2026-11", tokens[:3])
    assert replay["recorded"] == 1 and replay["duplicates"] == 2
    answer = core.analytics.attribution("acme", campaign, "2026-11")
    assert answer["rows"] == [
        {"month": "2026-11", "suppressed": False, "subjects": 6, "conversions": 3}
    ]
    # Conversion tokens of another month never match this month's sends.
    core.analytics.record_conversions("acme", "2026-10", tokens[3:])
    assert core.analytics.attribution("acme", campaign)["rows"][0]["conversions"] == 3

    noisy = core.analytics.attribution("acme", campaign, "2026-11", dp_epsilon=1.0)
    assert noisy["dp"]["l1_sensitivity"] == 2 and noisy["dp"]["epsilon"] == 1.0
    assert spent(core, "acme", "2026-11") == 1.0
    with pytest.raises(InvalidInput) as info:
        core.analytics.attribution("acme", campaign, dp_epsilon=1.0)
    assert info.value.field == "month"


def test_other_tenants_conversions_do_not_count(core: App, tenant: dict[str, Any]) -> None:
    core.tenants.create("other", "GB")
    core.analytics.put_settings("acme", 2, 10.0, False)
    people = make_subjects(core, "acme", 3)
    template = make_template(core, "acme")
    campaign = make_campaign(core, "acme", template)
    record_sends(core, "acme", people, template, campaign_id=campaign)
    tokens = core.analytics.join_tokens("acme", "2026-11", campaign)["tokens"]
    core.analytics.record_conversions("other", "2026-11", tokens)
    assert core.analytics.attribution("acme", campaign)["rows"][0]["suppressed"] is True
    # The other tenant's own join key gives other tokens for the same hashed ids.
    hashed = [p[1].encode() for p in people]
    theirs = core.keystore.join_macs("other", "2026-11", hashed)
    assert not set(theirs) & set(core.keystore.join_macs("acme", "2026-11", hashed))


BAD_CONVERSIONS: list[tuple[str, list[Any], str]] = [
    ("2026-13", ["A" * 43], "month"),
    ("2026-1", ["A" * 43], "month"),
    ("2026-12", ["A" * 43], "month"),  # the future
    ("2026-11", [], "tokens"),
    ("2026-11", ["A" * 42], "tokens[0]"),
    ("2026-11", ["A" * 43, "A" * 44], "tokens[1]"),  # all-or-nothing: the first not kept
    ("2026-11", ["A" * 42 + "B"], "tokens[0]"),  # not a canonical encoding of 32 bytes
    ("2026-11", ["A" * 42 + "="], "tokens[0]"),
    ("2026-11", [12345], "tokens[0]"),
    ("2026-11", ["0" * 64], "tokens[0]"),  # a hashed id is not a token
]


def test_bad_conversions_record_nothing(core: App, tenant: dict[str, Any]) -> None:
    for month, tokens, field in BAD_CONVERSIONS:
        with pytest.raises(InvalidInput) as info:
            core.analytics.record_conversions("acme", month, tokens)
        assert info.value.field == field, (month, tokens)
    with read_tx(core.engine) as conn:
        assert conn.execute(select(func.count()).select_from(analytics_conversions)).scalar() == 0
