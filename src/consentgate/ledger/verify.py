"""``ledger verify``: recompute everything the ledger claims and name the first bad seq.

Checks, streaming the ledger in seq order (memory: the state map and one chunk):

* seq continuity from 0 to the head's tree size (a deleted, inserted or renumbered row);
* each leaf's hash from its bytes, and its query columns against the leaf (an edited row);
* every stored Merkle node against the recomputed tree (a forged proof path);
* every checkpoint: its Ed25519 signature under one of the tenant's keys, and its root
  against the recomputed root at its size (an edit that also rewrote hashes);
* the head (size, root, frontier) and the state view recomputed from the leaves (a drifted
  state row, a state row with no event, a state row left behind by an erasure leaf).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    Select,
    SmallInteger,
    and_,
    bindparam,
    func,
    select,
    tuple_,
)
from sqlalchemy.dialects.postgresql import ARRAY

from consentgate.domain import consent as rules
from consentgate.domain.consent import ConsentStatus, StateEntry
from consentgate.domain.timeutil import from_micros, parse_rfc3339, to_micros
from consentgate.errors import InvalidInput, LedgerTampered
from consentgate.ledger import merkle
from consentgate.ledger.checkpoint import NoteError, verify_note
from consentgate.ledger.leaf import content_fingerprint, parse_leaf
from consentgate.ledger.store import LedgerStore, b64
from consentgate.storage.tables import (
    checkpoints,
    consent_state,
    ledger_entries,
    ledger_heads,
    ledger_nodes,
    purposes,
)

CHUNK = 5000
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class VerifyReport:
    tenant: str
    tree_size: int
    root_hash: str
    checkpoints: int
    nodes: int
    state_rows: int

    def as_dict(self) -> dict[str, Any]:
        return {"ok": True, **self.__dict__}


class _NodeChecker:
    """Compares recomputed perfect nodes with the stored ones, a chunk per query."""

    def __init__(self, conn: Connection, tenant: str) -> None:
        self._conn, self._tenant = conn, tenant
        self._pending: dict[merkle.Coord, bytes] = {}
        self.checked = 0

    def add(self, nodes: list[tuple[merkle.Coord, bytes]]) -> None:
        self._pending.update(nodes)
        if len(self._pending) >= CHUNK:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        stored = {
            (int(level), int(idx)): bytes(value)
            for level, idx, value in self._conn.execute(self._query())
        }
        for (level, idx), value in sorted(self._pending.items(), key=lambda i: i[0][1] << i[0][0]):
            if stored.get((level, idx)) != value:
                raise LedgerTampered(
                    f"stored Merkle node (level {level}, index {idx}) does not match the leaves",
                    seq=idx << level,
                )
        self.checked += len(self._pending)
        self._pending.clear()

    def _query(self) -> Select[Any]:
        nodes = ledger_nodes.c
        chosen = select(nodes.level, nodes.idx, nodes.hash).where(nodes.tenant_id == self._tenant)
        if self._conn.dialect.name != "postgresql":
            return chosen.where(tuple_(nodes.level, nodes.idx).in_(list(self._pending)))
        # PostgreSQL plans a row-value IN list as an OR of ANDs: on the hash-partitioned
        # ledger_nodes (0009) a chunk of 5,000 took 30-70 s to plan; a join on two arrays
        # takes milliseconds.
        levels, idxs = zip(*self._pending, strict=True)
        wanted = (
            func.unnest(
                bindparam("levels", list(levels), type_=ARRAY(SmallInteger)),
                bindparam("idxs", list(idxs), type_=ARRAY(BigInteger)),
            )
            .table_valued("level", "idx")
            .render_derived(name="wanted")
        )
        return chosen.join(wanted, and_(nodes.level == wanted.c.level, nodes.idx == wanted.c.idx))


def verify_tenant(
    conn: Connection, tenant: str, store: LedgerStore, progress: Progress | None = None
) -> VerifyReport:
    head = conn.execute(
        select(ledger_heads).where(ledger_heads.c.tenant_id == tenant)
    ).one_or_none()
    if head is None:
        raise InvalidInput(f"no ledger for tenant {tenant!r}", field="tenant")
    size = int(head.tree_size)
    keys = store.verifier_keys(tenant)
    cps = list(
        conn.execute(
            select(checkpoints.c.tree_size, checkpoints.c.root_hash, checkpoints.c.note)
            .where(checkpoints.c.tenant_id == tenant)
            .order_by(checkpoints.c.tree_size)
        )
    )
    max_age = {
        r.name: None if r.max_age_seconds is None else timedelta(seconds=r.max_age_seconds)
        for r in conn.execute(select(purposes).where(purposes.c.tenant_id == tenant))
    }
    frontier = merkle.CompactRange()
    nodes = _NodeChecker(conn, tenant)
    state: dict[tuple[str, str], StateEntry] = {}
    purposes_seen: set[str] = set()
    cp_index, last_good_cp = 0, 0
    expected = 0

    def check_checkpoints() -> None:
        nonlocal cp_index, last_good_cp
        while cp_index < len(cps) and cps[cp_index].tree_size == frontier.size:
            cp = cps[cp_index]
            try:
                signed = verify_note(cp.note, keys)
            except NoteError as exc:
                raise LedgerTampered(
                    f"checkpoint at tree size {cp.tree_size} does not verify: {exc}",
                    seq=max(cp.tree_size - 1, 0),
                ) from None
            if signed.size != cp.tree_size or signed.root_hash != bytes(cp.root_hash):
                raise LedgerTampered(
                    f"checkpoint row at tree size {cp.tree_size} disagrees with its signed note",
                    seq=max(cp.tree_size - 1, 0),
                )
            if signed.root_hash != frontier.root():
                raise LedgerTampered(
                    f"leaves in [{last_good_cp}, {cp.tree_size}) differ from what the checkpoint "
                    f"at tree size {cp.tree_size} signed",
                    seq=last_good_cp,
                )
            last_good_cp = cp.tree_size
            cp_index += 1

    check_checkpoints()
    while True:
        rows = list(
            conn.execute(
                select(ledger_entries)
                .where(ledger_entries.c.tenant_id == tenant, ledger_entries.c.seq >= expected)
                .order_by(ledger_entries.c.seq)
                .limit(CHUNK)
            )
        )
        if not rows:
            break
        for row in rows:
            seq = int(row.seq)
            if seq != expected:
                raise LedgerTampered(f"seq {expected} is missing (next row is {seq})", seq=expected)
            if seq >= size:
                raise LedgerTampered(
                    f"seq {seq} is beyond the ledger head (tree size {size})", seq=seq
                )
            leaf = bytes(row.leaf)
            digest = merkle.leaf_hash(leaf)
            if digest != bytes(row.leaf_hash):
                raise LedgerTampered(f"leaf {seq} does not match its recorded hash", seq=seq)
            _check_columns(row, leaf, tenant, seq)
            nodes.add(frontier.append(digest))
            if rules.is_erasure(row.status, row.consent_type):
                rules.forget(state, row.subject_ref, purposes_seen)
            else:
                entry = StateEntry(
                    _status(row.status, seq),
                    from_micros(int(row.ts_us)),
                    seq,
                    row.consent_id,
                )
                key = (row.subject_ref, row.consent_type)
                purposes_seen.add(row.consent_type)
                winner = rules.apply(state.get(key), entry)
                if winner is not None:
                    state[key] = winner
            check_checkpoints()
            expected += 1
        if progress is not None:
            progress(expected, size)
    nodes.flush()
    if expected != size:
        raise LedgerTampered(f"seq {expected} is missing (head says {size} leaves)", seq=expected)
    if bytes(head.root_hash) != frontier.root() or bytes(head.frontier) != b"".join(
        frontier.hashes
    ):
        raise LedgerTampered("the ledger head does not match the recomputed tree", seq=None)
    if cp_index != len(cps):
        bad = cps[cp_index].tree_size
        raise LedgerTampered(f"checkpoint at tree size {bad} is beyond the leaves", seq=bad - 1)
    # When the checkpoint workers sign (sign_on_commit off), the leaves since the last pass
    # are not signed yet: they are checked against the head's recomputed root above.
    if size and store.sign_on_commit and (not cps or cps[-1].tree_size != size):
        raise LedgerTampered("the latest leaves are not covered by a checkpoint", seq=last_good_cp)
    stored_nodes = conn.execute(
        select(func.count()).select_from(ledger_nodes).where(ledger_nodes.c.tenant_id == tenant)
    ).scalar_one()
    if stored_nodes != nodes.checked:
        raise LedgerTampered(
            f"{stored_nodes} Merkle nodes are stored but the leaves make {nodes.checked}", seq=None
        )
    state_rows = _check_state(conn, tenant, state, max_age)
    return VerifyReport(tenant, size, b64(frontier.root()), len(cps), nodes.checked, state_rows)


def _status(value: str, seq: int) -> ConsentStatus:
    try:
        return ConsentStatus(value)
    except ValueError:
        raise LedgerTampered(f"leaf {seq} has an unknown status", seq=seq) from None


def _check_columns(row: Any, leaf: bytes, tenant: str, seq: int) -> None:
    try:
        doc = parse_leaf(leaf)
        consistent = (
            doc["seq"] == seq
            and doc["tenant"] == tenant
            and doc["event_id"] == row.event_id
            and doc["subject_ref"] == row.subject_ref
            and doc["consent_type"] == row.consent_type
            and doc["status"] == row.status
            and doc["consent_id"] == row.consent_id
            and to_micros(parse_rfc3339(doc["timestamp"])) == row.ts_us
            and to_micros(parse_rfc3339(doc["received_at"])) == row.received_us
            and content_fingerprint(doc) == bytes(row.content_hash)
        )
    except (ValueError, KeyError, TypeError, InvalidInput):
        consistent = False
    if not consistent:
        raise LedgerTampered(f"row {seq} disagrees with its own leaf", seq=seq)


def _check_state(
    conn: Connection,
    tenant: str,
    expected: dict[tuple[str, str], StateEntry],
    max_age: dict[str, timedelta | None],
) -> int:
    seen: set[tuple[str, str]] = set()
    for row in conn.execute(
        select(consent_state)
        .where(consent_state.c.tenant_id == tenant)
        .order_by(consent_state.c.subject_ref, consent_state.c.consent_type)
    ):
        seen.add((row.subject_ref, row.consent_type))
        entry = expected.get((row.subject_ref, row.consent_type))
        if entry is None:
            raise LedgerTampered(
                f"a {row.consent_type} state row has no event in the ledger", seq=int(row.event_seq)
            )
        expiry = rules.expires_at(entry, max_age.get(row.consent_type))
        if (
            row.status != entry.status.value
            or row.effective_us != to_micros(entry.effective_at)
            or row.event_seq != entry.event_seq
            or row.consent_id != entry.consent_id
            or row.expires_us != (None if expiry is None else to_micros(expiry))
        ):
            raise LedgerTampered(
                f"the {row.consent_type} state of a subject drifted from the ledger "
                f"(the ledger says seq {entry.event_seq})",
                seq=entry.event_seq,
            )
    missing = [e.event_seq for key, e in expected.items() if key not in seen]
    if missing:
        raise LedgerTampered(
            f"{len(missing)} state rows are missing from the view", seq=min(missing)
        )
    return len(seen)
