"""The pre-filter's two plans (temporary table, streamed hash join) give the same decision for
every id — allowed, withdrawn, expired, ambiguous, unknown, another tenant's, another
purpose's — and the same as an on-send check of each subject; the planner picks by size;
either plan fails closed."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert, text

from consentgate.bootstrap import App
from consentgate.consent.ingest import EventInput
from consentgate.domain.clock import FixedClock
from consentgate.domain.reasons import ReasonCode
from consentgate.gate import prefilter as plans
from consentgate.gate.cache import StateCache
from consentgate.gate.gate import ConsentGate, GateDecision
from consentgate.storage.engine import build_engine, read_tx
from consentgate.storage.tables import subject_links

PURPOSE = "marketing_rcs"  # grants last 730 days


def _stamp(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def _ingest(core: App, tenant: str, events: list[EventInput]) -> list[str]:
    return [r.hashed_id for r in core.ingest.ingest(tenant, "GB", events, batch=True)]


def _audience(core: App, clock: FixedClock) -> tuple[list[str], dict[str, str]]:
    """Ids of every kind for tenant acme, and what each should come out as."""
    core.tenants.create("acme", "GB")
    core.tenants.create("beta", "GB")
    recent, old = _stamp(clock.now() - timedelta(days=1)), _stamp(clock.now() - timedelta(days=800))

    def event(i: int, status: str, ts: str, purpose: str = PURPOSE) -> EventInput:
        return EventInput(f"c{i}-{purpose}", purpose, status, ts, phone=f"+4479111{i:05d}")

    granted = _ingest(core, "acme", [event(i, "granted", recent) for i in range(20)])
    kinds: dict[str, str] = dict.fromkeys(granted, "allowed")
    withdrawn = _ingest(core, "acme", [event(i, "withdrawn", recent) for i in range(20, 30)])
    kinds.update(dict.fromkeys(withdrawn, "withdrawn"))
    expired = _ingest(core, "acme", [event(i, "granted", old) for i in range(30, 40)])
    kinds.update(dict.fromkeys(expired, "expired"))
    other_purpose = _ingest(
        core, "acme", [event(i, "granted", recent, "analytics") for i in range(40, 50)]
    )
    kinds.update(dict.fromkeys(other_purpose, "no_consent"))
    # The same numbers at another tenant: other hashes, and no state of acme's.
    beta = _ingest(core, "beta", [event(i, "granted", recent) for i in range(0, 20)])
    assert not set(beta) & set(kinds)
    kinds.update(dict.fromkeys(beta, "no_consent"))
    unknown = [secrets.token_hex(32) for _ in range(15)]
    kinds.update(dict.fromkeys(unknown, "no_consent"))
    # A state row in no known status (written around the service): never a send.
    odd = withdrawn[-1]
    with core.engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE consent_state SET status = 'pending' WHERE tenant_id = 'acme' AND "
                "consent_type = :p AND subject_ref = (SELECT subject_ref FROM subject_links "
                "WHERE tenant_id = 'acme' AND hashed_id = :h)"
            ),
            {"p": PURPOSE, "h": odd},
        )
    kinds[odd] = "ambiguous"
    ids = list(kinds)
    return ids + ids[:7], kinds  # duplicates are decided once


def _oracle(core: App, hashed_id: str) -> GateDecision:
    """The on-send check of the subject (cold cache), or no_consent if none is linked."""
    with read_tx(core.engine) as conn:
        ref = conn.execute(
            text(
                "SELECT subject_ref FROM subject_links WHERE tenant_id = 'acme' AND hashed_id = :h"
            ),
            {"h": hashed_id},
        ).scalar()
    if ref is None:
        return GateDecision(False, ReasonCode.NO_CONSENT, None)
    core.gate.cache.clear()
    d = core.gate.check("acme", str(ref), PURPOSE)
    return GateDecision(d.allowed, d.reason, d.consent_seq)


def test_both_plans_decide_every_id_like_an_on_send_check(
    core: App, clock: FixedClock, backend: str
) -> None:
    ids, kinds = _audience(core, clock)
    stream = core.gate.prefilter("acme", ids, PURPOSE, plan=plans.Plan.STREAM)
    temp = core.gate.prefilter("acme", iter(ids), PURPOSE, plan=plans.Plan.TEMP_TABLE)
    chosen = core.gate.prefilter("acme", ids, PURPOSE)
    assert list(stream) == list(dict.fromkeys(ids))  # every id once, in the order given
    assert stream == temp == chosen
    for hashed_id, decision in stream.items():
        assert decision == _oracle(core, hashed_id), kinds[hashed_id]
        outcome = "allowed" if decision.allowed else (decision.reason or "").lower()
        assert outcome == kinds[hashed_id]
    # The expired ones were grants: their seq names the leaf, like the others'.
    assert all(d.consent_seq is not None for h, d in stream.items() if kinds[h] == "expired")
    assert core.gate.prefilter("acme", [], PURPOSE) == {}


def test_expiry_is_judged_when_the_prefilter_runs(
    core: App, clock: FixedClock, backend: str
) -> None:
    ids, kinds = _audience(core, clock)
    clock.advance(timedelta(days=730))  # the recent grants lapse too
    for plan in plans.Plan:
        decisions = core.gate.prefilter("acme", ids, PURPOSE, plan=plan)
        lapsed = [h for h, k in kinds.items() if k == "allowed"]
        assert {decisions[h].reason for h in lapsed} == {ReasonCode.EXPIRED}


def test_the_planner_picks_by_size(core: App, clock: FixedClock, backend: str) -> None:
    ids, _ = _audience(core, clock)
    big = ids + [secrets.token_hex(32) for _ in range(plans.SMALL + 1)]
    with read_tx(core.engine) as conn:
        assert plans.choose(conn, "acme", len(ids)) is plans.Plan.TEMP_TABLE  # small: no count
        assert plans.choose(conn, "acme", len(big)) is plans.Plan.STREAM  # most of the tenant
    # A tenant far larger than the audience: the audience goes to the database.
    now = int(clock.now().timestamp() * 1_000_000)
    rows = [
        {
            "tenant_id": "acme",
            "hashed_id": secrets.token_hex(32),
            "salt_version": 1,
            "subject_ref": secrets.token_hex(16),
            "created_us": now,
        }
        for _ in range(int(len(big) * plans.TEMP_TABLE_COST / plans.STREAM_COST) + 1)
    ]
    with core.engine.begin() as conn:
        conn.execute(insert(subject_links), rows)
    with read_tx(core.engine) as conn:
        assert plans.choose(conn, "acme", len(big)) is plans.Plan.TEMP_TABLE
    assert core.gate.prefilter("acme", big, PURPOSE) == core.gate.prefilter(
        "acme", big, PURPOSE, plan=plans.Plan.STREAM
    )


def test_either_plan_fails_closed_when_the_store_cannot_answer(tmp_path: Path) -> None:
    from consentgate.config import load_settings

    # A reachable database without consentgate's tables: every statement fails.
    settings = load_settings(
        {
            "CONSENTGATE_DATA_DIR": str(tmp_path),
            "CONSENTGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}",
        }
    )
    gate = ConsentGate(build_engine(settings.storage), FixedClock(datetime.now(UTC)), StateCache())
    ids = [secrets.token_hex(32) for _ in range(plans.SMALL + 2)]
    for plan in (*plans.Plan, None):
        for audience in (ids, ids[:3]):
            decisions: dict[str, Any] = gate.prefilter("acme", audience, PURPOSE, plan=plan)
            assert len(decisions) == len(audience)
            assert {d.reason for d in decisions.values()} == {ReasonCode.STORE_UNAVAILABLE}
