"""Identity and subjects: keyed hashes per salt version, links to random subject_refs, and a
ledger that knows people only by subject_ref. SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from consentgate.bootstrap import App
from consentgate.consent.ingest import EventInput, IngestResult
from consentgate.crypto.keystore import KeyKind
from consentgate.domain.clock import FixedClock
from consentgate.domain.consent import EffectiveStatus
from consentgate.domain.identity import normalise_email, normalise_phone
from consentgate.domain.timeutil import format_rfc3339
from consentgate.ledger.leaf import parse_leaf
from consentgate.storage.tables import consent_state, ledger_entries, subject_links

PHONE_NATIONAL = "07911 123456"
PHONE_E164 = "+447911123456"


def record(
    core: App,
    clock: FixedClock,
    consent_id: str,
    status: str = "granted",
    hours_ago: float = 1,
    **who: Any,
) -> IngestResult:
    if not who:
        who = {"phone": PHONE_NATIONAL}
    event = EventInput(
        consent_id=consent_id,
        consent_type="marketing_rcs",
        status=status,
        timestamp=format_rfc3339(clock.now() - timedelta(hours=hours_ago)),
        **who,
    )
    [result] = core.ingest.ingest("acme", "GB", [event], batch=False)
    return result


def links(core: App) -> list[Any]:
    with core.engine.connect() as conn:
        return list(
            conn.execute(
                select(
                    subject_links.c.hashed_id,
                    subject_links.c.salt_version,
                    subject_links.c.subject_ref,
                )
                .where(subject_links.c.tenant_id == "acme")
                .order_by(subject_links.c.salt_version)
            )
        )


def keyed(core: App, version: int, value: str) -> str:
    return core.keystore.keyed_hash("acme", version, value.encode()).hex()


def lookup(core: App, phone: str = PHONE_NATIONAL) -> Any:
    return core.queries.by_identifier("acme", normalise_phone(phone, "GB"))


def test_hashed_id_is_the_keyed_hash_of_the_e164_number(
    core: App, tenant: dict[str, Any], clock: FixedClock
) -> None:
    r = record(core, clock, "k1")
    assert r.hashed_id == keyed(core, 1, PHONE_E164)
    assert PHONE_E164.encode().hex() not in r.hashed_id
    [link] = links(core)
    assert (link.hashed_id, link.salt_version) == (r.hashed_id, 1)


def test_salt_rotation_links_the_new_hash_to_the_same_subject(
    core: App, tenant: dict[str, Any], clock: FixedClock
) -> None:
    before = record(core, clock, "r1", "granted", hours_ago=3)
    assert core.keystore.rotate("acme", KeyKind.SALT) == "2"
    assert core.keystore.salt_versions("acme") == [1, 2]

    # Before any new event the lookup answers with a hash that resolves: the v1 one.
    found = lookup(core)
    assert found.hashed_id == before.hashed_id
    assert core.queries.by_hashed_id("acme", found.hashed_id).consents == found.consents

    after = record(core, clock, "r2", "withdrawn", hours_ago=2)
    assert after.hashed_id != before.hashed_id
    assert after.hashed_id == keyed(core, 2, PHONE_E164)
    assert before.hashed_id == keyed(core, 1, PHONE_E164)

    rows = links(core)
    assert len(rows) == 2
    assert [r.salt_version for r in rows] == [1, 2]
    assert [r.hashed_id for r in rows] == [before.hashed_id, after.hashed_id]
    assert rows[0].subject_ref == rows[1].subject_ref

    # The raw number sees events of both versions; the latest one decides.
    found = lookup(core)
    assert found.hashed_id == after.hashed_id
    assert found.consents["marketing_rcs"].status is EffectiveStatus.WITHDRAWN
    assert found.consents["marketing_rcs"].event_seq == after.seq

    # A late, older event under v2 changes nothing; a newer one sent by the old hash does.
    record(core, clock, "r3", "granted", hours_ago=4)
    assert lookup(core).consents["marketing_rcs"].status is EffectiveStatus.WITHDRAWN
    newest = record(core, clock, "r4", "granted", hours_ago=1, hashed_id=before.hashed_id)
    assert newest.hashed_id == before.hashed_id
    by_old = core.queries.by_hashed_id("acme", before.hashed_id)
    by_new = core.queries.by_hashed_id("acme", after.hashed_id)
    assert by_old.consents == by_new.consents == lookup(core).consents
    assert by_old.consents["marketing_rcs"].status is EffectiveStatus.GRANTED
    assert by_old.consents["marketing_rcs"].event_seq == newest.seq

    history_old = core.queries.history("acme", before.hashed_id)
    assert history_old == core.queries.history("acme", after.hashed_id)
    assert [h["consent_id"] for h in history_old] == ["r1", "r2", "r3", "r4"]
    assert len({h["subject_ref"] for h in history_old}) == 1
    assert history_old[0]["subject_ref"] == rows[0].subject_ref
    assert len(links(core)) == 2  # no duplicate links from repeated events


def test_a_new_person_after_rotation_is_linked_under_the_current_version_only(
    core: App, tenant: dict[str, Any], clock: FixedClock
) -> None:
    core.keystore.rotate("acme", KeyKind.SALT)
    r = record(core, clock, "n1")
    [link] = links(core)
    assert link.salt_version == 2
    assert link.hashed_id == r.hashed_id == keyed(core, 2, PHONE_E164)


def test_a_retried_event_after_rotation_is_still_a_replay(
    core: App, tenant: dict[str, Any], clock: FixedClock
) -> None:
    first = record(core, clock, "retry")
    core.keystore.rotate("acme", KeyKind.SALT)
    again = record(core, clock, "retry")
    assert not again.created
    assert (again.seq, again.event_id) == (first.seq, first.event_id)


def test_national_and_international_forms_are_one_subject(
    core: App, tenant: dict[str, Any], clock: FixedClock
) -> None:
    spellings = [
        "07911 123456",
        "+447911123456",
        "+44 7911 123456",
        "07911123456",
        "(07911) 123 456",
    ]
    results = [
        record(core, clock, f"f{i}", ("granted", "withdrawn")[i % 2], hours_ago=10 - i, phone=s)
        for i, s in enumerate(spellings)
    ]
    assert len({r.hashed_id for r in results}) == 1
    assert len(links(core)) == 1
    for spelling in spellings:
        view = lookup(core, spelling).consents["marketing_rcs"]
        assert view.event_seq == results[-1].seq
        assert view.status is EffectiveStatus.GRANTED
    assert len(core.queries.history("acme", results[0].hashed_id)) == len(spellings)


def test_email_identifiers(core: App, tenant: dict[str, Any], clock: FixedClock) -> None:
    a = record(core, clock, "e1", "granted", hours_ago=2, email="Alice.Smith@Example.COM")
    b = record(core, clock, "e2", "withdrawn", hours_ago=1, email=" alice.smith@example.com ")
    assert a.hashed_id == b.hashed_id == keyed(core, 1, "alice.smith@example.com")
    found = core.queries.by_identifier("acme", normalise_email("ALICE.SMITH@example.com"))
    assert found.hashed_id == a.hashed_id
    assert found.consents["marketing_rcs"].status is EffectiveStatus.WITHDRAWN
    idn = record(core, clock, "e3", email="kim@bücher.example")
    assert idn.hashed_id == keyed(core, 1, "kim@xn--bcher-kva.example")
    # A phone and an e-mail are never merged into one subject.
    phone = record(core, clock, "e4")
    refs = {r.hashed_id: r.subject_ref for r in links(core)}
    assert len(refs) == 3
    assert refs[phone.hashed_id] != refs[a.hashed_id]
    assert refs[idn.hashed_id] != refs[a.hashed_id]


def test_leaves_name_people_only_by_random_subject_ref(
    core: App, tenant: dict[str, Any], clock: FixedClock
) -> None:
    record(core, clock, "l1", "granted", hours_ago=3)
    record(core, clock, "l2", "granted", hours_ago=3, email="carol@example.org")
    core.keystore.rotate("acme", KeyKind.SALT)
    record(core, clock, "l3", "withdrawn", hours_ago=2)
    hashed_ids = [r.hashed_id for r in links(core)]
    assert len(hashed_ids) == 3
    forbidden = [
        *hashed_ids,
        PHONE_E164,
        PHONE_E164.removeprefix("+"),
        "7911123456",
        "carol@example.org",
        "carol",
    ]
    with core.engine.connect() as conn:
        rows = list(conn.execute(select(ledger_entries).order_by(ledger_entries.c.seq)))
        states = list(conn.execute(select(consent_state)))
    assert len(rows) == 3
    refs = {r.hashed_id: r.subject_ref for r in links(core)}
    for row in rows:
        leaf = bytes(row.leaf)
        doc = parse_leaf(leaf)
        assert uuid.UUID(doc["subject_ref"]).version == 4
        assert doc["subject_ref"] == row.subject_ref
        assert doc["subject_ref"] in refs.values()
        text = leaf.decode()
        for value in forbidden:
            assert value not in text
        for column in row._mapping.values():
            if isinstance(column, str):
                assert column not in forbidden
    assert {s.subject_ref for s in states} <= set(refs.values())
    # The phone's three events name one subject; Carol's another.
    by_consent = {parse_leaf(bytes(r.leaf))["consent_id"]: r.subject_ref for r in rows}
    assert by_consent["l1"] == by_consent["l3"] != by_consent["l2"]
