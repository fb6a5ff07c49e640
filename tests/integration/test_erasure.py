"""Erasure on both backends: the subject becomes unfindable and unlinkable, the ledger still
verifies, other subjects and tenants are untouched, and the deleted bytes leave the files."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select, text, update
from standardwebhooks import Webhook

from consentgate.bootstrap import App
from consentgate.consent.ingest import EventInput
from consentgate.crypto.keystore import KeyKind
from consentgate.delivery.templates import Template
from consentgate.domain.clock import FixedClock
from consentgate.domain.identity import normalise_phone
from consentgate.domain.reasons import ReasonCode
from consentgate.errors import InvalidInput, LedgerTampered, NotFound
from consentgate.ledger.verify import verify_tenant
from consentgate.storage.engine import read_tx, write_tx
from consentgate.storage.tables import (
    campaign_recipients,
    consent_state,
    ledger_entries,
    messages,
    subject_links,
)
from tests.integration.privacy_scan import files_containing, rows_containing

ERASED = "+447911100001"
KEPT = "+447911100002"
TS = "2026-11-01T10:00:00Z"


def _ingest(core: App, tenant: str, cid: str, phone: str, purpose: str, status: str) -> str:
    [r] = core.ingest.ingest(
        tenant, "GB", [EventInput(cid, purpose, status, TS, phone=phone)], batch=False
    )
    return r.hashed_id


def _webhook(core: App, secret: str, clock: FixedClock, payload: dict[str, Any]) -> None:
    body = json.dumps(payload)
    msg_id = f"msg_{uuid.uuid4().hex}"
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(clock.now().timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, clock.now(), body),
    }
    core.cmp_webhooks.handle("acme", "generic", headers, body.encode())


def _ref(core: App, hashed_id: str) -> str:
    with read_tx(core.engine) as conn:
        return str(
            conn.execute(
                select(subject_links.c.subject_ref).where(subject_links.c.hashed_id == hashed_id)
            ).scalar_one()
        )


def _populate(core: App, tenant: dict[str, Any], clock: FixedClock) -> dict[str, Any]:
    """A subject with everything erasure must reach, and a bystander with the same kinds."""
    old = _ingest(core, "acme", "c-1", ERASED, "marketing_rcs", "granted")
    core.keystore.rotate("acme", KeyKind.SALT)  # the subject now has two hashed ids
    new = _ingest(core, "acme", "c-2", ERASED, "analytics", "withdrawn")
    kept = _ingest(core, "acme", "k-1", KEPT, "marketing_rcs", "granted")
    _webhook(
        core,
        tenant["webhook_secret"],
        clock,
        {
            "consent_id": "w-1",
            "hashed_id": new,
            "consent_type": "personalization",
            "status": "granted",
            "timestamp": TS,
        },
    )
    _webhook(
        core,
        tenant["webhook_secret"],
        clock,
        {
            "consent_id": "w-2",
            "hashed_id": kept,
            "consent_type": "personalization",
            "status": "granted",
            "timestamp": TS,
        },
    )
    for phone in (ERASED, KEPT):
        hashed = core.links.hash_identifier("acme", normalise_phone(phone, "GB"))
        core.registry.register_device(
            "acme", hashed, rcs=True, native_e2ee=True, key=None, expires_at=None
        )
    core.registry.create_template("acme", Template("tpl-1", "hello", "Hello", None, False))
    skipped = core.messages.send(
        "acme", normalise_phone(ERASED, "GB"), "analytics", "tpl-1", {}, "crm-order-77"
    )
    assert skipped["decision"]["reason"] == ReasonCode.WITHDRAWN.value
    campaign = core.campaigns.create("acme", "tpl-1", "marketing_rcs")
    audience = f"phone\n{ERASED}\n{KEPT}\n".encode()
    core.campaigns.upload("acme", "GB", campaign, iter([audience]), "text/csv")
    core.campaigns.send("acme", campaign)  # both queued, nothing dispatched
    with read_tx(core.engine) as conn:
        first = conn.execute(  # the erased subject's queued row (uploaded first)
            select(campaign_recipients.c.sealed, campaign_recipients.c.wrapped_key).where(
                campaign_recipients.c.seq == 0
            )
        ).one()
        request_hash = bytes(
            conn.execute(
                select(messages.c.request_hash).where(messages.c.id == skipped["message_id"])
            ).scalar_one()
        )
    return {
        "hashes": [old, new],
        "ref": _ref(core, new),
        "kept": kept,
        "kept_ref": _ref(core, kept),
        "campaign": campaign,
        "message_id": skipped["message_id"],
        "secrets": [bytes(first.sealed), bytes(first.wrapped_key), request_hash],
    }


def test_erasure_unlinks_everything_and_the_ledger_still_verifies(
    core: App, tenant: dict[str, Any], clock: FixedClock
) -> None:
    s = _populate(core, tenant, clock)
    with read_tx(core.engine) as conn:
        before = verify_tenant(conn, "acme", core.ledger)
    assert rows_containing(core.engine, s["hashes"])  # the scan finds them while they exist

    report = core.erasure.erase("acme", s["hashes"][0])  # an old-salt hashed id works too

    assert report.ledger_seq == before.tree_size and report.tree_size == before.tree_size + 1
    c = report.counts
    assert (c["subject_links"], c["devices"], c["campaign_recipients"]) == (2, 1, 1)
    assert c["consent_state"] == 3 and c["messages"] == 1 and c["webhook_receipts"] == 1
    with read_tx(core.engine) as conn:
        after = verify_tenant(conn, "acme", core.ledger)
        leaf = conn.execute(
            select(ledger_entries).where(ledger_entries.c.seq == report.ledger_seq)
        ).one()
        message = conn.execute(select(messages).where(messages.c.id == s["message_id"])).one()
        recipients = conn.execute(
            select(campaign_recipients).order_by(campaign_recipients.c.seq)
        ).all()
    assert after.tree_size == before.tree_size + 1 and after.state_rows == 2  # the bystander
    assert (leaf.status, leaf.consent_type, leaf.subject_ref) == ("erased", "*", s["ref"])
    assert leaf.consent_id.startswith("erasure:")
    # The send decision stays for the reports, with nothing that leads back to the person.
    assert (message.action, message.reason) == ("skipped", "withdrawn")
    assert message.subject_ref is None and message.consent_seq is None
    assert bytes(message.request_hash) == bytes(32)
    assert message.idempotency_key == f"erased:{message.id}"
    # The queued recipient is skipped and its number gone; the bystander still waits.
    erased_row, kept_row = recipients
    assert (erased_row.state, erased_row.action, erased_row.reason) == (
        "done",
        "skipped",
        "erased",
    )
    assert erased_row.hashed_id is None and erased_row.sealed is None
    assert kept_row.state == "queued" and kept_row.hashed_id == s["kept"]

    # Nothing anywhere names the subject's hashed ids or the secrets derived from it; its
    # random ref survives only in the ledger (leaves) and the erasure log.
    assert rows_containing(core.engine, s["hashes"] + s["secrets"]) == {}
    assert set(rows_containing(core.engine, [s["ref"]])) == {"ledger_entries", "erasures"}


def test_after_erasure_nothing_finds_the_subject_and_sends_are_skipped(
    core: App, tenant: dict[str, Any], clock: FixedClock
) -> None:
    s = _populate(core, tenant, clock)
    core.erasure.erase("acme", s["hashes"][1])
    phone = normalise_phone(ERASED, "GB")
    for hashed_id in s["hashes"]:
        with pytest.raises(NotFound):
            core.queries.by_hashed_id("acme", hashed_id)
        with pytest.raises(NotFound):
            core.queries.history("acme", hashed_id)
        with pytest.raises(NotFound):
            core.receipts.receipt("acme", hashed_id, "marketing_rcs")
        with pytest.raises(NotFound):
            core.erasure.erase("acme", hashed_id)  # a second erasure: the link is gone
        with pytest.raises(InvalidInput):  # events by hashed id name no known subject
            _ingest_hashed(core, hashed_id)
    with pytest.raises(NotFound):
        core.queries.by_identifier("acme", phone)
    assert core.gate.prefilter("acme", s["hashes"], "marketing_rcs")[s["hashes"][1]].reason is (
        ReasonCode.NO_CONSENT
    )
    decision = core.messages.send("acme", phone, "marketing_rcs", "tpl-1", {}, "after-erasure")
    assert (decision["decision"]["action"], decision["decision"]["reason"]) == (
        "skipped",
        "no_consent",
    )
    # The bystander is untouched.
    assert core.queries.by_hashed_id("acme", s["kept"]).consents["marketing_rcs"].event_seq >= 0
    assert core.registry.device_for("acme", s["kept_ref"]) is not None
    with read_tx(core.engine) as conn:
        assert (
            conn.execute(
                text("SELECT count(*) FROM webhook_receipts WHERE response LIKE :h"),
                {"h": f"%{s['kept']}%"},
            ).scalar_one()
            == 1
        )

    # A new consent makes a new subject: the old leaves stay unlinked.
    fresh = _ingest(core, "acme", "c-9", ERASED, "marketing_rcs", "granted")
    assert _ref(core, fresh) != s["ref"]
    state = core.queries.by_identifier("acme", phone)
    assert set(state.consents) == {"marketing_rcs"}
    assert [e["consent_id"] for e in core.queries.history("acme", fresh)] == ["c-9"]
    with read_tx(core.engine) as conn:
        assert verify_tenant(conn, "acme", core.ledger).state_rows == 3  # 2 kept + 1 new


def _ingest_hashed(core: App, hashed_id: str) -> None:
    core.ingest.ingest(
        "acme",
        "GB",
        [EventInput(f"h-{uuid.uuid4()}", "marketing_rcs", "granted", TS, hashed_id=hashed_id)],
        batch=False,
    )


def test_erasure_is_scoped_to_the_tenant(core: App, tenant: dict[str, Any]) -> None:
    core.tenants.create("beta", "GB")
    mine = _ingest(core, "acme", "c-1", ERASED, "marketing_rcs", "granted")
    theirs = _ingest(core, "beta", "c-1", ERASED, "marketing_rcs", "granted")
    assert mine != theirs  # per-tenant salts
    with pytest.raises(NotFound):
        core.erasure.erase("beta", mine)
    with pytest.raises(NotFound):
        core.erasure.erase("acme", "0" * 64)
    with pytest.raises(InvalidInput):
        core.erasure.erase("acme", "not-a-hash")
    core.erasure.erase("beta", theirs)
    assert core.queries.by_hashed_id("acme", mine).consents["marketing_rcs"].status == "granted"
    with read_tx(core.engine) as conn:
        for name in ("acme", "beta"):
            verify_tenant(conn, name, core.ledger)


def test_erasure_evicts_the_gate_cache(core: App, tenant: dict[str, Any]) -> None:
    hashed = _ingest(core, "acme", "c-1", ERASED, "marketing_rcs", "granted")
    ref = _ref(core, hashed)
    assert core.gate.check("acme", ref, "marketing_rcs").allowed
    assert core.gate.check("acme", ref, "marketing_rcs").from_cache
    core.erasure.erase("acme", hashed)
    after = core.gate.check("acme", ref, "marketing_rcs")
    assert not after.allowed and not after.from_cache and after.reason is ReasonCode.NO_CONSENT


def test_the_bytes_leave_the_database_files(
    core: App, tenant: dict[str, Any], clock: FixedClock, backend: str, request: Any
) -> None:
    s = _populate(core, tenant, clock)
    if backend == "pg":
        with core.engine.connect() as conn:  # planner statistics now sample the hashed ids
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("ANALYZE")
    report = core.erasure.erase("acme", s["hashes"][1])
    needles = s["hashes"] + s["secrets"]
    if backend == "sqlite":
        assert report.storage == {
            "engine": "sqlite",
            "secure_delete": True,
            "wal_checkpoint": "complete",
        }
        db = Path(core.engine.url.database or "")
        files = [db, db.with_name(db.name + "-wal")]
    else:
        assert report.storage["vacuum"] == "plain" and "subject_links" in report.storage["vacuumed"]
        assert "failed" not in report.storage
        # Plain VACUUM does not promise to overwrite a pruned row's bytes (docs/privacy.md):
        # the guarantee on PostgreSQL comes from the compacting rewrite.
        compact = core.retention.run(["acme"], compact=True)["storage"]
        assert compact["vacuum"] == "full" and "failed" not in compact
        files = _pg_database_files(core, request)
    assert files_containing(files, needles) == []


def _pg_database_files(core: App, request: Any) -> list[Path]:
    cluster = request.getfixturevalue("pg_cluster")
    with core.engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("CHECKPOINT")
        oid = conn.execute(
            text("SELECT oid FROM pg_database WHERE datname = current_database()")
        ).scalar_one()
    return sorted((Path(cluster.datadir) / "base" / str(oid)).iterdir())


def test_verify_flags_state_that_survives_an_erasure(core: App, tenant: dict[str, Any]) -> None:
    hashed = _ingest(core, "acme", "c-1", ERASED, "marketing_rcs", "granted")
    ref = _ref(core, hashed)
    with read_tx(core.engine) as conn:
        row = dict(conn.execute(text("SELECT * FROM consent_state")).one()._mapping)
    report = core.erasure.erase("acme", hashed)
    with write_tx(core.engine) as conn:  # someone puts the erased subject's state back
        conn.execute(insert(consent_state).values(**row))
    with read_tx(core.engine) as conn, pytest.raises(LedgerTampered) as caught:
        verify_tenant(conn, "acme", core.ledger)
    assert caught.value.seq == 0 and row["subject_ref"] == ref
    assert report.ledger_seq == 1


def test_retention_rescrubs_a_send_that_finished_after_the_erasure(
    core: App, tenant: dict[str, Any]
) -> None:
    hashed = _ingest(core, "acme", "c-1", ERASED, "marketing_rcs", "granted")
    ref = _ref(core, hashed)
    core.registry.create_template("acme", Template("tpl-1", "hello", "Hello", None, False))
    answer = core.messages.send(
        "acme", normalise_phone(ERASED, "GB"), "analytics", "tpl-1", {}, "in-flight"
    )
    with read_tx(core.engine) as conn:
        written = dict(
            conn.execute(select(messages).where(messages.c.id == answer["message_id"]))
            .one()
            ._mapping
        )
    core.erasure.erase("acme", hashed)
    with write_tx(core.engine) as conn:  # the racing send's final write lands after the erasure
        conn.execute(update(messages).where(messages.c.id == written["id"]).values(**written))
    deleted = core.retention.run(["acme"])["tenants"]["acme"]["deleted"]
    assert deleted["messages_rescrubbed"] == 1
    assert set(rows_containing(core.engine, [ref])) == {"ledger_entries", "erasures"}
    assert rows_containing(core.engine, [hashed, written["request_hash"]]) == {}
