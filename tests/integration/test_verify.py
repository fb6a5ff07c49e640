"""`ledger verify` finds every change made behind the service's back, on both backends."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Connection, text

from consentgate.bootstrap import App
from consentgate.consent.ingest import EventInput
from consentgate.errors import LedgerTampered
from consentgate.ledger.leaf import content_fingerprint
from consentgate.ledger.verify import VerifyReport, verify_tenant
from consentgate.storage.engine import read_tx


def _events(start: int, count: int) -> list[EventInput]:
    return [
        EventInput(
            consent_id=f"c{i}",
            consent_type="marketing_rcs" if i % 3 else "analytics",
            status="withdrawn" if i % 4 == 3 else "granted",
            timestamp=f"2026-10-{1 + i % 27:02d}T10:00:00Z",
            phone=f"+4479111{i % 7:05d}",
        )
        for i in range(start, start + count)
    ]


@pytest.fixture
def ledger(core: App, tenant: dict[str, Any]) -> App:
    """Three batches: 10 + 1 + 9 leaves, so checkpoints at 10, 11 and 20."""
    for start, count in ((0, 10), (10, 1), (11, 9)):
        core.ingest.ingest("acme", "GB", _events(start, count), batch=True)
    return core


def _verify(core: App) -> VerifyReport:
    with read_tx(core.engine) as conn:
        return verify_tenant(conn, "acme", core.ledger)


def _tamper(core: App, *statements: str) -> None:
    """Run SQL as an attacker would: with the append-only triggers out of the way."""
    with core.engine.connect() as conn, conn.begin():
        _drop_triggers(conn)
        for sql in statements:
            conn.execute(text(sql))


def _drop_triggers(conn: Connection) -> None:
    for table in ("ledger_entries", "ledger_nodes", "checkpoints"):
        if conn.dialect.name == "postgresql":
            conn.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))
        else:
            for action in ("update", "delete"):
                conn.execute(text(f"DROP TRIGGER IF EXISTS {table}_no_{action}"))


def _first_bad(core: App) -> int | None:
    with pytest.raises(LedgerTampered) as info:
        _verify(core)
    return info.value.seq


def test_clean_ledger_verifies(ledger: App) -> None:
    report = _verify(ledger)
    assert report.tree_size == 20
    assert report.checkpoints == 3
    assert report.state_rows > 0


def _forge(core: App, seq: int, *, rehash: bool) -> None:
    """Flip a leaf's status in its bytes; optionally recompute its hash and column too."""
    with core.engine.connect() as conn:
        leaf = bytes(
            conn.execute(
                text("SELECT leaf FROM ledger_entries WHERE seq = :s"), {"s": seq}
            ).scalar_one()
        )
    forged = leaf.replace(b'"granted"', b'"withdrawn"')
    if forged == leaf:
        forged = leaf.replace(b'"withdrawn"', b'"granted"')
    assert forged != leaf
    sets = "leaf = :leaf"
    params: dict[str, Any] = {"leaf": forged, "s": seq}
    if rehash:
        doc = json.loads(forged)
        sets += ", leaf_hash = :h, status = :st, content_hash = :ch"
        params.update(
            h=hashlib.sha256(b"\x00" + forged).digest(),
            st=doc["status"],
            ch=content_fingerprint(doc),
        )
    with core.engine.connect() as conn, conn.begin():
        _drop_triggers(conn)
        conn.execute(text(f"UPDATE ledger_entries SET {sets} WHERE seq = :s"), params)


def test_edited_leaf_is_named(ledger: App) -> None:
    _forge(ledger, 5, rehash=False)
    assert _first_bad(ledger) == 5


def test_edit_with_recomputed_hash_is_caught_by_the_checkpoint(ledger: App) -> None:
    _forge(ledger, 13, rehash=True)
    # The row is self-consistent now (hash, columns, fingerprint): only the signed checkpoint
    # at 20 betrays it, so verification names the first leaf of the batch it covers.
    assert _first_bad(ledger) == 11


@pytest.mark.parametrize(("where", "expected"), [("seq = 7", 7), ("seq = 19", 19)])
def test_deleted_row_is_named(ledger: App, where: str, expected: int) -> None:
    _tamper(ledger, f"DELETE FROM ledger_entries WHERE {where}")
    assert _first_bad(ledger) == expected


def test_inserted_row_beyond_the_head_is_named(ledger: App) -> None:
    _tamper(
        ledger,
        "INSERT INTO ledger_entries (tenant_id, seq, event_id, subject_ref, consent_type, status,"
        " ts_us, received_us, consent_id, content_hash, leaf, leaf_hash)"
        " SELECT tenant_id, 20, event_id, subject_ref, consent_type, status, ts_us, received_us,"
        " 'forged', content_hash, leaf, leaf_hash FROM ledger_entries WHERE seq = 3",
    )
    assert _first_bad(ledger) == 20


def test_reordered_rows_are_named(ledger: App) -> None:
    _tamper(
        ledger,
        "UPDATE ledger_entries SET seq = -1 WHERE seq = 2",
        "UPDATE ledger_entries SET seq = 2 WHERE seq = 3",
        "UPDATE ledger_entries SET seq = 3 WHERE seq = -1",
    )
    assert _first_bad(ledger) == 2


def test_drifted_state_row_is_named(ledger: App) -> None:
    with ledger.engine.connect() as conn:
        seq = conn.execute(
            text("SELECT event_seq FROM consent_state WHERE status = 'granted' LIMIT 1")
        ).scalar_one()
        conn.execute(
            text("UPDATE consent_state SET status = 'withdrawn' WHERE event_seq = :s"), {"s": seq}
        )
        conn.commit()
    assert _first_bad(ledger) == seq


def test_deleted_state_row_is_found(ledger: App) -> None:
    with ledger.engine.connect() as conn:
        conn.execute(
            text(
                "DELETE FROM consent_state WHERE event_seq = (SELECT MIN(event_seq) "
                "FROM consent_state)"
            )
        )
        conn.commit()
    assert _first_bad(ledger) is not None


def test_forged_node_is_found(ledger: App) -> None:
    _tamper(
        ledger,
        "UPDATE ledger_nodes SET hash = leaf_hash_dummy".replace(
            "leaf_hash_dummy", "(SELECT leaf_hash FROM ledger_entries WHERE seq = 0)"
        )
        + " WHERE level = 1 AND idx = 2",
    )
    assert _first_bad(ledger) == 4


def test_forged_checkpoint_signature_is_found(ledger: App) -> None:
    _tamper(
        ledger,
        "UPDATE checkpoints SET note = REPLACE(note, '\n11\n', '\n12\n') WHERE tree_size = 11",
    )
    assert _first_bad(ledger) == 10


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c.execute(text("UPDATE ledger_entries SET leaf = leaf WHERE seq = 0")),
        lambda c: c.execute(text("DELETE FROM ledger_entries WHERE seq = 0")),
        lambda c: c.execute(text("DELETE FROM checkpoints")),
    ],
    ids=["update", "delete", "delete-checkpoints"],
)
def test_triggers_refuse_changes(ledger: App, mutate: Callable[[Connection], Any]) -> None:
    with (
        pytest.raises(Exception, match="append-only"),
        ledger.engine.connect() as conn,
        conn.begin(),
    ):
        mutate(conn)
    assert _verify(ledger).tree_size == 20
