"""The ledger is append-only in the database itself, and what it stores proves itself: signed
checkpoints verify, and inclusion and consistency proofs fold to the checkpointed roots.
SQLite and PostgreSQL."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from consentgate.bootstrap import App
from consentgate.consent.ingest import EventInput
from consentgate.crypto.keystore import KeyKind
from consentgate.domain.clock import FixedClock
from consentgate.domain.timeutil import format_rfc3339
from consentgate.errors import InvalidInput
from consentgate.ledger import merkle
from consentgate.ledger.checkpoint import Checkpoint, NoteError, verify_note
from consentgate.storage.tables import checkpoints, ledger_entries, ledger_nodes

PHONES = [f"+447911{100000 + i}" for i in range(40)]


def events(clock: FixedClock, start: int, n: int) -> list[EventInput]:
    return [
        EventInput(
            consent_id=f"evt-{i:04d}",
            consent_type=("marketing_rcs", "analytics", "transactional_rcs")[i % 3],
            status=("granted", "withdrawn")[(i // 3) % 2],
            timestamp=format_rfc3339(clock.now() - timedelta(minutes=10_000 - i)),
            phone=PHONES[i % len(PHONES)],
        )
        for i in range(start, start + n)
    ]


def grow(core: App, clock: FixedClock, sizes: list[int]) -> None:
    """Ingest batches so the tree passes through (and is checkpointed at) each size."""
    done = 0
    for size in sizes:
        batch = events(clock, done, size - done)
        core.ingest.ingest("acme", "GB", batch, batch=len(batch) > 1)
        done = size


def snapshot(core: App, table: Any) -> list[tuple[Any, ...]]:
    with core.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(table).order_by(*table.primary_key.columns))]


TAMPERING = {
    "ledger_entries": [
        "UPDATE ledger_entries SET status = 'withdrawn' WHERE tenant_id = 'acme' AND seq = 0",
        "UPDATE ledger_entries SET leaf = leaf WHERE tenant_id = 'acme'",
        "DELETE FROM ledger_entries WHERE tenant_id = 'acme' AND seq = 2",
        "DELETE FROM ledger_entries",
    ],
    "ledger_nodes": [
        "UPDATE ledger_nodes SET idx = idx + 1000 WHERE tenant_id = 'acme' AND level = 1",
        "UPDATE ledger_nodes SET hash = (SELECT leaf_hash FROM ledger_entries WHERE seq = 0)",
        "DELETE FROM ledger_nodes WHERE tenant_id = 'acme'",
    ],
    "checkpoints": [
        "UPDATE checkpoints SET note = 'forged' WHERE tenant_id = 'acme'",
        "UPDATE checkpoints SET tree_size = tree_size + 1",
        "DELETE FROM checkpoints WHERE tenant_id = 'acme' AND tree_size = 1",
        "DELETE FROM checkpoints",
    ],
}
TABLES = {
    "ledger_entries": ledger_entries,
    "ledger_nodes": ledger_nodes,
    "checkpoints": checkpoints,
}


def test_update_and_delete_are_refused_by_the_database(
    core: App, tenant: dict[str, Any], clock: FixedClock
) -> None:
    grow(core, clock, [1, 4])
    for name, statements in TAMPERING.items():
        before = snapshot(core, TABLES[name])
        assert before, f"{name} should have rows to tamper with"
        for sql in statements:
            with pytest.raises(DBAPIError) as info, core.engine.begin() as conn:
                conn.execute(text(sql))
            assert "append-only" in str(info.value), sql
            assert name in str(info.value), sql
            assert snapshot(core, TABLES[name]) == before, sql
    # The service's own writes still work afterwards, and only ever add rows.
    grow(core, clock, [6])
    assert len(snapshot(core, ledger_entries)) == 6
    assert len(snapshot(core, checkpoints)) == 3


@pytest.mark.parametrize("backend", ["pg"])
def test_truncate_is_refused_on_postgresql(
    core: App, tenant: dict[str, Any], clock: FixedClock, backend: str
) -> None:
    assert core.engine.dialect.name == "postgresql"
    grow(core, clock, [3])
    for sql in [*(f"TRUNCATE {name}" for name in TABLES), "TRUNCATE tenants CASCADE"]:
        before = {name: snapshot(core, table) for name, table in TABLES.items()}
        with pytest.raises(DBAPIError) as info, core.engine.begin() as conn:
            conn.execute(text(sql))
        assert "append-only" in str(info.value), sql
        assert "TRUNCATE" in str(info.value), sql
        assert {name: snapshot(core, table) for name, table in TABLES.items()} == before


SIZES = [1, 2, 7, 300]


def _sample(size: int) -> list[int]:
    if size <= 16:
        return list(range(size))
    edges = {0, 1, size // 2, size - 2, size - 1, 127, 128, 255, 256}
    rng = random.Random(size)
    return sorted({s for s in edges if s < size} | {rng.randrange(size) for _ in range(12)})


def test_proofs_verify_against_signed_checkpoints(
    core: App, tenant: dict[str, Any], clock: FixedClock
) -> None:
    grow(core, clock, SIZES)
    keys = core.ledger.verifier_keys("acme")
    with core.engine.connect() as conn:
        rows = list(conn.execute(select(checkpoints).order_by(checkpoints.c.tree_size)))
        leaves = [
            bytes(r.leaf)
            for r in conn.execute(select(ledger_entries.c.leaf).order_by(ledger_entries.c.seq))
        ]
        assert [r.tree_size for r in rows] == SIZES
        assert len(leaves) == SIZES[-1]
        leaf_hashes = [merkle.leaf_hash(leaf) for leaf in leaves]

        roots: dict[int, bytes] = {}
        for row in rows:
            cp = verify_note(row.note, keys)
            assert cp == Checkpoint(core.ledger.origin("acme"), row.tree_size, bytes(row.root_hash))
            # The signed root is the RFC 9162 root of exactly the first tree_size leaves.
            assert cp.root_hash == merkle.root_of(leaf_hashes[: cp.size])
            assert core.ledger.root_at(conn, "acme", cp.size) == cp.root_hash
            roots[cp.size] = cp.root_hash
        latest = core.ledger.latest_checkpoint(conn, "acme")
        assert (latest.tree_size, latest.root_hash) == (300, roots[300])

        for size in SIZES:
            for seq in _sample(size):
                got_size, leaf_hash, proof = core.ledger.inclusion_proof(conn, "acme", seq, size)
                assert got_size == size
                assert leaf_hash == leaf_hashes[seq]
                merkle.verify_inclusion(leaf_hash, seq, size, proof, roots[size])
                with pytest.raises(merkle.ProofError):
                    merkle.verify_inclusion(leaf_hash, seq, size, proof, merkle.EMPTY_ROOT)
                if size > 1:
                    with pytest.raises(merkle.ProofError):
                        merkle.verify_inclusion(
                            leaf_hash, (seq + 1) % size, size, proof, roots[size]
                        )
        # Without tree_size the proof is against the current tree.
        assert core.ledger.inclusion_proof(conn, "acme", 5, None)[0] == 300

        for i, first in enumerate(SIZES):
            for second in SIZES[i:]:
                proof = core.ledger.consistency_proof(conn, "acme", first, second)
                merkle.verify_consistency(first, second, proof, roots[first], roots[second])
                if first != second:
                    with pytest.raises(merkle.ProofError):
                        merkle.verify_consistency(first, second, proof, roots[second], roots[first])
        # Sizes that were never checkpointed are provable too, from the stored nodes.
        proof = core.ledger.consistency_proof(conn, "acme", 5, 300)
        merkle.verify_consistency(5, 300, proof, merkle.root_of(leaf_hashes[:5]), roots[300])

        for seq, size in [(300, 300), (-1, 300), (0, 301)]:
            with pytest.raises(InvalidInput):
                core.ledger.inclusion_proof(conn, "acme", seq, size)
        for first, second in [(0, 7), (8, 7), (7, 301)]:
            with pytest.raises(InvalidInput):
                core.ledger.consistency_proof(conn, "acme", first, second)


def test_checkpoints_verify_across_a_signing_key_rotation(
    core: App, tenant: dict[str, Any], clock: FixedClock
) -> None:
    grow(core, clock, [2, 3])
    old_kid = core.keystore.sign("acme", b"probe").kid
    core.keystore.rotate("acme", KeyKind.SIGNING)
    new_kid = core.keystore.sign("acme", b"probe").kid
    assert new_kid != old_kid
    grow(core, clock, [5])
    keys = core.ledger.verifier_keys("acme")
    assert len(keys) == 2
    with core.engine.connect() as conn:
        rows = list(conn.execute(select(checkpoints).order_by(checkpoints.c.tree_size)))
        assert [(r.tree_size, r.kid) for r in rows] == [(2, old_kid), (3, old_kid), (5, new_kid)]
        for row in rows:
            assert verify_note(row.note, keys).size == row.tree_size
        # The current key comes first and alone verifies only the new checkpoint.
        assert verify_note(rows[-1].note, keys[:1]).size == 5
        with pytest.raises(NoteError):
            verify_note(rows[0].note, keys[:1])
        roots = {r.tree_size: bytes(r.root_hash) for r in rows}
        proof = core.ledger.consistency_proof(conn, "acme", 3, 5)
        merkle.verify_consistency(3, 5, proof, roots[3], roots[5])


def test_a_checkpoint_does_not_verify_under_another_tenants_key(
    core: App, tenant: dict[str, Any], clock: FixedClock
) -> None:
    core.tenants.create("beta", "GB")
    grow(core, clock, [1])
    with core.engine.connect() as conn:
        note = core.ledger.latest_checkpoint(conn, "acme").note
    assert verify_note(note, core.ledger.verifier_keys("acme")).size == 1
    with pytest.raises(NoteError):
        verify_note(note, core.ledger.verifier_keys("beta"))
