"""Point-in-time audit (GET /v1/audit/consents) on SQLite and PostgreSQL: the service's
set-based answer equals a brute-force replay of the ledger with ``domain.consent.fold``, for
events ingested out of order, at random ``as_of`` / ``known_at`` instants, through pages of
random size and ranges of random length."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select

from consentgate.audit import pointintime
from consentgate.bootstrap import App
from consentgate.consent.ingest import EventInput
from consentgate.crypto.signing import b64url
from consentgate.domain import consent as rules
from consentgate.domain.clock import FixedClock
from consentgate.domain.consent import ConsentStatus, StateEntry
from consentgate.domain.identity import normalise_phone
from consentgate.domain.timeutil import format_rfc3339, from_micros, to_micros
from consentgate.errors import InvalidInput
from consentgate.ledger.leaf import LeafEvent, content_fingerprint
from consentgate.ledger.store import NewLeaf
from consentgate.storage.engine import write_tx
from consentgate.storage.tables import ledger_entries, subject_links

PHONES = ["+447911100001", "+447911100002", "+447911100003", "+447911100004"]
PURPOSES = ["marketing_rcs", "transactional_rcs", "promo"]  # promo: grants expire after 1 day
HOUR = 3_600_000_000
_names = itertools.count()


def new_tenant(core: App) -> str:
    name = f"t{next(_names)}"
    core.tenants.create(name, "GB")
    core.tenants.set_purpose(name, "promo", 1, "expires after a day")
    return name


def replay(
    core: App, tenant: str, purpose: str, as_of_us: int, known_us: int | None, status: str
) -> list[dict[str, Any]]:
    """The answer by brute force: every ledger row, filtered in Python, folded by the domain."""
    with core.engine.connect() as conn:
        rows = conn.execute(
            select(ledger_entries).where(ledger_entries.c.tenant_id == tenant)
        ).all()
        links = conn.execute(
            select(subject_links.c.subject_ref, subject_links.c.hashed_id)
            .where(subject_links.c.tenant_id == tenant)
            .order_by(subject_links.c.salt_version)
        ).all()
    newest = {ref: hashed for ref, hashed in links}
    seen = [
        r for r in rows if r.ts_us <= as_of_us and (known_us is None or r.received_us <= known_us)
    ]
    erased = {r.subject_ref for r in seen if r.status == "erased"}
    state = rules.fold(
        (
            r.subject_ref,
            r.consent_type,
            StateEntry(ConsentStatus(r.status), from_micros(r.ts_us), int(r.seq), r.consent_id),
        )
        for r in seen
        if r.status in ("granted", "withdrawn")
    )
    max_age = core.tenants.catalogue(tenant)[purpose].max_age
    out = []
    for (ref, kind), entry in state.items():
        if kind != purpose or ref in erased:
            continue
        view = rules.view(entry, max_age, from_micros(as_of_us))
        if status in ("all", view.status.value):
            out.append(
                {
                    "hashed_id": newest.get(ref),
                    "status": view.status.value,
                    "effective_at": format_rfc3339(view.effective_at),
                    "seq": view.event_seq,
                }
            )
    return sorted(out, key=lambda s: (s["hashed_id"] or "", s["seq"]))


def every_page(core: App, tenant: str, limit: int, **params: Any) -> list[dict[str, Any]]:
    query = core.audit.as_of_query(tenant, **params)
    found: list[dict[str, Any]] = []
    cursor = None
    for _ in range(100):
        page = core.audit.consents_page(tenant, query, cursor, limit)
        assert len(page["subjects"]) <= limit
        found += page["subjects"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    else:
        pytest.fail("paging did not end")
    keys = [s["hashed_id"] for s in found]
    assert len(keys) == len(set(keys)), "a subject appeared on two pages"
    return sorted(found, key=lambda s: (s["hashed_id"] or "", s["seq"]))


@contextmanager
def range_rows(n: int) -> Iterator[None]:
    """Small ranges, so a handful of events spans several of them."""
    saved = pointintime.RANGE_ROWS
    pointintime.RANGE_ROWS = n
    try:
        yield
    finally:
        pointintime.RANGE_ROWS = saved


_ID_CHARS = "aZ09-_é中ß"
# Events come in clusters sharing subject, purpose and instant (6-hour steps), with random
# statuses: equal timestamps — the tie rules — in nearly every example.
cluster = st.fixed_dictionaries(
    {
        "subject": st.integers(0, 2),
        "purpose": st.sampled_from(PURPOSES[::2]),
        "slot": st.integers(0, 3),
        "statuses": st.lists(st.sampled_from(["granted", "withdrawn"]), min_size=1, max_size=3),
    }
)
consent_ids = st.lists(
    st.text(_ID_CHARS, min_size=1, max_size=3), min_size=24, max_size=24, unique=True
)
scenario = st.fixed_dictionaries(
    {
        "clusters": st.lists(cluster, min_size=1, max_size=8),
        "ids": consent_ids,
        "order": st.randoms(use_true_random=False),
        "arrivals": st.lists(st.integers(1, 4), min_size=1, max_size=14),
        "gaps_h": st.lists(st.integers(0, 30), min_size=24, max_size=24),
        "as_of_slot": st.integers(-1, 6),
        "as_of_jitter_us": st.sampled_from([0, 1, -1, 3 * HOUR]),
        "known_after_h": st.one_of(st.none(), st.integers(-1, 200)),
        "purpose": st.sampled_from(PURPOSES[::2]),
        "status": st.sampled_from(["granted", "withdrawn", "expired", "all"]),
        "limit": st.integers(1, 4),
        "range_rows": st.integers(1, 6),
        # Optionally erase one subject afterwards, its erasure timestamped at some slot.
        "erase": st.one_of(st.none(), st.tuples(st.integers(0, 2), st.integers(0, 5))),
    }
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=scenario)
def test_as_of_matches_brute_force_replay(core: App, clock: FixedClock, case: Any) -> None:
    tenant = new_tenant(core)
    start = clock.now()
    base = start - timedelta(days=4)
    flat = [(c, status) for c in case["clusters"] for status in c["statuses"]]
    events = [
        EventInput(
            consent_id=consent_id,
            consent_type=c["purpose"],
            status=status,
            timestamp=format_rfc3339(base + timedelta(hours=6 * c["slot"])),
            phone=PHONES[c["subject"]],
        )
        for (c, status), consent_id in zip(flat, case["ids"], strict=False)
    ]
    case["order"].shuffle(events)
    # Out of order: the list is random in time, and arrives in batches at random later instants.
    sizes = itertools.cycle(case["arrivals"])
    gaps = iter(case["gaps_h"])
    pending = list(events)
    while pending:
        size = next(sizes)
        batch, pending = pending[:size], pending[size:]
        clock.advance(timedelta(hours=next(gaps)))
        core.ingest.ingest(tenant, "GB", batch, batch=len(batch) > 1)

    if case["erase"] is not None:
        subject, slot = case["erase"]
        clock.advance(timedelta(hours=1))
        found = core.links.hash_identifier(tenant, normalise_phone(PHONES[subject], "GB"))
        with core.engine.connect() as conn:
            linked = core.links.find(conn, tenant, found)
        if linked is not None:
            _erase(core, tenant, linked[1], to_micros(base) + slot * 6 * HOUR)

    as_of_us = to_micros(base) + case["as_of_slot"] * 6 * HOUR + case["as_of_jitter_us"]
    known_us = (
        None if case["known_after_h"] is None else to_micros(start) + case["known_after_h"] * HOUR
    )
    params = {
        "as_of": format_rfc3339(from_micros(as_of_us)),
        "consent_type": case["purpose"],
        "known_at": None if known_us is None else format_rfc3339(from_micros(known_us)),
        "status": case["status"],
    }
    with range_rows(case["range_rows"]):
        got = every_page(core, tenant, case["limit"], **params)
    expected = replay(core, tenant, case["purpose"], as_of_us, known_us, case["status"])
    assert got == expected
    # The streamed whole answer (CSV) takes the one-statement path: the same answer.
    query = core.audit.as_of_query(tenant, **params)
    streamed = [s.as_dict() for s in core.audit.consents_stream(tenant, query, None, None)]
    assert sorted(streamed, key=lambda s: (s["hashed_id"] or "", s["seq"])) == expected


def _ingest(core: App, tenant: str, *events: tuple[str, str, str, str, str]) -> list[str]:
    """(consent_id, phone, purpose, status, timestamp) → hashed ids."""
    results = core.ingest.ingest(
        tenant,
        "GB",
        [
            EventInput(consent_id=c, phone=p, consent_type=k, status=s, timestamp=t)
            for c, p, k, s, t in events
        ],
        batch=True,
    )
    return [r.hashed_id for r in results]


def test_now_equals_the_live_view(core: App, clock: FixedClock) -> None:
    tenant = new_tenant(core)
    now = clock.now()
    ts = [format_rfc3339(now - timedelta(hours=h)) for h in (30, 20, 10, 10)]
    hashed = _ingest(
        core,
        tenant,
        ("a1", PHONES[0], "promo", "granted", ts[0]),  # older than a day: expired
        ("b1", PHONES[1], "promo", "granted", ts[1]),
        ("b2", PHONES[1], "promo", "withdrawn", ts[2]),
        ("c1", PHONES[2], "promo", "granted", ts[3]),
        ("c2", PHONES[2], "promo", "withdrawn", ts[3]),  # same instant: withdrawn wins
        ("d1", PHONES[3], "promo", "granted", ts[2]),
    )
    page = every_page(
        core, tenant, 10, as_of=format_rfc3339(now), consent_type="promo", status="all"
    )
    live = {h: core.queries.by_hashed_id(tenant, h).consents["promo"] for h in set(hashed)}
    assert {s["hashed_id"]: (s["status"], s["seq"]) for s in page} == {
        h: (v.status.value, v.event_seq) for h, v in live.items()
    }
    assert {s["status"] for s in page} == {"expired", "withdrawn", "granted"}
    granted = every_page(core, tenant, 10, as_of=format_rfc3339(now), consent_type="promo")
    assert [s["hashed_id"] for s in granted] == [hashed[5]]


def _erase(core: App, tenant: str, hashed_id: str, at_us: int) -> None:
    """What an erasure records (DESIGN §3): a leaf ``erased``/``*`` for the subject, appended
    through the ledger, and the subject's links deleted."""
    now_us = to_micros(core.clock.now())
    with write_tx(core.engine) as conn:
        ref = core.links.resolve_hashed(conn, tenant, hashed_id)
        head = core.ledger.lock_head(conn, tenant)
        leaf = LeafEvent(
            tenant=tenant,
            seq=head.tree_size,
            event_id="00000000-0000-4000-8000-000000000001",
            subject_ref=ref,
            consent_type="*",
            status="erased",
            timestamp=format_rfc3339(from_micros(at_us)),
            received_at=format_rfc3339(from_micros(now_us)),
            consent_id="erasure-1",
            source="api",
        )
        doc = leaf.document()
        core.ledger.append(
            conn,
            tenant,
            head,
            [
                NewLeaf(
                    head.tree_size,
                    leaf.event_id,
                    ref,
                    "*",
                    "erased",
                    at_us,
                    now_us,
                    "erasure-1",
                    content_fingerprint(doc),
                    leaf.to_bytes(),
                )
            ],
            now_us,
        )
        conn.execute(
            delete(subject_links).where(
                subject_links.c.tenant_id == tenant, subject_links.c.subject_ref == ref
            )
        )


def test_erasure_leaf_is_no_state_and_erased_subjects_have_no_hashed_id(
    core: App, clock: FixedClock
) -> None:
    tenant = new_tenant(core)
    t0 = clock.now() - timedelta(hours=5)
    gone, kept = _ingest(
        core,
        tenant,
        ("g1", PHONES[0], "marketing_rcs", "granted", format_rfc3339(t0)),
        ("k1", PHONES[1], "marketing_rcs", "granted", format_rfc3339(t0)),
    )
    clock.advance(timedelta(hours=1))
    erased_at = to_micros(clock.now())
    _erase(core, tenant, gone, erased_at)
    clock.advance(timedelta(hours=1))

    def granted(as_of_us: int, known_us: int | None = None) -> list[str | None]:
        page = every_page(
            core,
            tenant,
            10,
            as_of=format_rfc3339(from_micros(as_of_us)),
            consent_type="marketing_rcs",
            known_at=None if known_us is None else format_rfc3339(from_micros(known_us)),
        )
        return sorted(s["hashed_id"] or "" for s in page)

    # Before the erasure the subject was consented; who it was is no longer known.
    assert granted(erased_at - 1) == sorted(["", kept])
    # From the erasure on it has no state; as known before the erasure, it still had one.
    assert granted(erased_at) == [kept]
    assert granted(erased_at + HOUR, known_us=erased_at - 1) == sorted(["", kept])
    for status in ("all", "withdrawn", "expired"):
        page = every_page(
            core,
            tenant,
            10,
            as_of=format_rfc3339(clock.now()),
            consent_type="marketing_rcs",
            status=status,
        )
        assert all(s["hashed_id"] == kept for s in page)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"as_of": "2026-13-01T00:00:00Z"}, "as_of"),
        ({"as_of": "yesterday"}, "as_of"),
        ({"known_at": "2026-01-01"}, "known_at"),
        ({"consent_type": "nope"}, "consent_type"),
        ({"consent_type": "*"}, "consent_type"),
        ({"status": "erased"}, "status"),
    ],
)
def test_bad_parameters_name_the_field(
    core: App, tenant: dict[str, Any], params: dict[str, Any], field: str
) -> None:
    given_ = {"as_of": "2026-01-01T00:00:00Z", "consent_type": "marketing_rcs", **params}
    with pytest.raises(InvalidInput) as raised:
        core.audit.as_of_query("acme", **given_)
    assert raised.value.field == field


@pytest.mark.parametrize(
    "cursor",
    [
        "x",  # not base64url
        "cw==",  # padded
        b64url(b"s|"),  # no subject
        b64url(b"s|" + b"_" * 36),  # not a subject_ref
        b64url(b"m|1|abc"),  # a send cursor
        b64url("s|é".encode()),  # not ASCII
    ],
)
def test_bad_cursor_is_rejected(core: App, tenant: dict[str, Any], cursor: str) -> None:
    query = core.audit.as_of_query("acme", as_of="2026-01-01T00:00:00Z", consent_type="analytics")
    with pytest.raises(InvalidInput) as raised:
        core.audit.consents_page("acme", query, cursor, 10)
    assert raised.value.field == "cursor"
