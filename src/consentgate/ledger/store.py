"""The ledger store: appends leaves, keeps the Merkle nodes a proof needs, signs checkpoints.

Every perfect subtree at level ≥ 1 is stored once, when it completes (``ledger_nodes``);
level-0 hashes are the leaves' own ``leaf_hash``. A proof is therefore a plan of O(log² n)
coordinates (pure, :mod:`consentgate.ledger.merkle`) fetched in two indexed queries — never a
rebuild. The head row holds the frontier (compact range) so an append needs no reads beyond
that row, and locking that row serialises appends per tenant (no global lock).

Checkpoints: by default every append commit signs one (a receipt can always be proved at
once). With ``sign_on_commit=False`` an append only moves the head, and checkpoint workers
(:mod:`consentgate.ledger.signer`) sign each moved head periodically, off the append's
critical section; receipts and exports then sign on demand when the newest checkpoint does
not yet cover what they prove.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert, select, text

from consentgate.crypto.keystore import KeyStore
from consentgate.errors import InvalidInput, NotFound
from consentgate.ledger import merkle
from consentgate.ledger.checkpoint import Checkpoint, signature_line, verifier_key
from consentgate.storage import lean
from consentgate.storage.tables import checkpoints, ledger_entries, ledger_heads

_LOCK_HEAD = "SELECT tree_size, frontier FROM ledger_heads WHERE tenant_id = :t"
_LOCK_HEAD_PG = _LOCK_HEAD + " FOR UPDATE"
_MOVE_HEAD = (
    "UPDATE ledger_heads SET tree_size = :s, root_hash = :r, frontier = :f WHERE tenant_id = :t"
)
ENTRY_COLUMNS = (
    "tenant_id",
    "seq",
    "event_id",
    "subject_ref",
    "consent_type",
    "status",
    "ts_us",
    "received_us",
    "consent_id",
    "content_hash",
    "leaf",
    "leaf_hash",
)
NODE_COLUMNS = ("tenant_id", "level", "idx", "hash")
_INSERT_CHECKPOINT = lean.insert_sql(
    "checkpoints", ("tenant_id", "tree_size", "root_hash", "note", "kid", "created_us")
)
_HEAD = "SELECT tree_size, root_hash FROM ledger_heads WHERE tenant_id = :t"
_SIGNED_AT = "SELECT 1 FROM checkpoints WHERE tenant_id = :t AND tree_size = :s"
# Tenants whose head is past their newest checkpoint (the correlated max is one index probe
# per tenant, pruned to the tenant's partition on PostgreSQL).
_MOVED = (
    "SELECT h.tenant_id FROM ledger_heads h WHERE h.tree_size > COALESCE("
    "(SELECT max(c.tree_size) FROM checkpoints c WHERE c.tenant_id = h.tenant_id), 0) "
    "ORDER BY h.tenant_id"
)


@dataclass(frozen=True, slots=True)
class NewLeaf:
    """A leaf ready to append: its canonical bytes and the columns queries need."""

    seq: int
    event_id: str
    subject_ref: str
    consent_type: str
    status: str
    ts_us: int
    received_us: int
    consent_id: str
    content_hash: bytes
    leaf: bytes


@dataclass(frozen=True, slots=True)
class Head:
    tree_size: int
    frontier: merkle.CompactRange


@dataclass(frozen=True, slots=True)
class SignedCheckpoint:
    tree_size: int
    root_hash: bytes
    note: str
    kid: str


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class LedgerStore:
    def __init__(
        self, keystore: KeyStore, origin_prefix: str, *, sign_on_commit: bool = True
    ) -> None:
        self._keys = keystore
        self._prefix = origin_prefix.rstrip("/")
        self.sign_on_commit = sign_on_commit

    def origin(self, tenant: str) -> str:
        return f"{self._prefix}/{tenant}"

    # -- head --------------------------------------------------------------------------------
    def init_tenant(self, conn: Connection, tenant: str) -> None:
        conn.execute(
            insert(ledger_heads).values(
                tenant_id=tenant, tree_size=0, root_hash=merkle.EMPTY_ROOT, frontier=b""
            )
        )

    def lock_head(self, conn: Connection, tenant: str) -> Head:
        """Read the head for appending; on PostgreSQL the row lock serialises this tenant's
        appends until commit (SQLite writers are already serialised by BEGIN IMMEDIATE)."""
        found = lean.rows(
            conn,
            _LOCK_HEAD_PG if conn.dialect.name == "postgresql" else _LOCK_HEAD,
            {"t": tenant},
        )
        if not found:
            raise NotFound(f"tenant {tenant!r} has no ledger")
        size, raw = int(found[0][0]), bytes(found[0][1])
        hashes = [raw[i : i + 32] for i in range(0, len(raw), 32)]
        return Head(size, merkle.CompactRange(size, hashes))

    def tree_size(self, conn: Connection, tenant: str) -> int:
        size = conn.execute(
            select(ledger_heads.c.tree_size).where(ledger_heads.c.tenant_id == tenant)
        ).scalar_one_or_none()
        if size is None:
            raise NotFound(f"tenant {tenant!r} has no ledger")
        return int(size)

    # -- append ------------------------------------------------------------------------------
    def append(
        self, conn: Connection, tenant: str, head: Head, leaves: Sequence[NewLeaf], now_us: int
    ) -> tuple[list[bytes], SignedCheckpoint | None]:
        """Append ``leaves`` (whose seqs continue ``head``), store new nodes, move the head and
        (``sign_on_commit``) sign a checkpoint — all inside the caller's transaction. Returns
        the leaf hashes and the checkpoint signed, if any."""
        frontier = head.frontier
        leaf_rows: list[dict[str, Any]] = []
        node_rows: list[dict[str, Any]] = []
        hashes: list[bytes] = []
        for offset, leaf in enumerate(leaves):
            if leaf.seq != head.tree_size + offset:
                raise ValueError("leaves must continue the head's sequence")
            digest = merkle.leaf_hash(leaf.leaf)
            hashes.append(digest)
            leaf_rows.append(
                {
                    "tenant_id": tenant,
                    "seq": leaf.seq,
                    "event_id": leaf.event_id,
                    "subject_ref": leaf.subject_ref,
                    "consent_type": leaf.consent_type,
                    "status": leaf.status,
                    "ts_us": leaf.ts_us,
                    "received_us": leaf.received_us,
                    "consent_id": leaf.consent_id,
                    "content_hash": leaf.content_hash,
                    "leaf": leaf.leaf,
                    "leaf_hash": digest,
                }
            )
            for (level, idx), value in frontier.append(digest):
                node_rows.append({"tenant_id": tenant, "level": level, "idx": idx, "hash": value})
        # Lean statements (consentgate.storage.lean): this runs in every ingest commit.
        lean.insert_rows(conn, "ledger_entries", ENTRY_COLUMNS, leaf_rows)
        lean.insert_rows(conn, "ledger_nodes", NODE_COLUMNS, node_rows)
        root = frontier.root()
        lean.run(
            conn,
            _MOVE_HEAD,
            {"t": tenant, "s": frontier.size, "r": root, "f": b"".join(frontier.hashes)},
        )
        if not self.sign_on_commit:
            return hashes, None
        return hashes, self._checkpoint(conn, tenant, frontier.size, root, now_us)

    # -- deferred checkpoints ----------------------------------------------------------------
    def moved_tenants(self, conn: Connection) -> list[str]:
        """Tenants whose head has leaves no checkpoint covers yet."""
        return [str(r[0]) for r in lean.rows(conn, _MOVED, {})]

    def sign_head(self, conn: Connection, tenant: str, now_us: int) -> SignedCheckpoint | None:
        """Sign the tenant's current head unless it is empty or already signed. The caller
        makes this exclusive per tenant (:mod:`consentgate.ledger.signer`), so a tree size
        is never signed twice; the primary key would refuse a second row anyway."""
        found = lean.rows(conn, _HEAD, {"t": tenant})
        if not found:
            raise NotFound(f"tenant {tenant!r} has no ledger")
        size, root = int(found[0][0]), bytes(found[0][1])
        if size == 0 or lean.rows(conn, _SIGNED_AT, {"t": tenant, "s": size}):
            return None
        return self._checkpoint(conn, tenant, size, root, now_us)

    def _checkpoint(
        self, conn: Connection, tenant: str, size: int, root: bytes, now_us: int
    ) -> SignedCheckpoint:
        origin = self.origin(tenant)
        body = Checkpoint(origin, size, root).body()
        sig = self._keys.sign(tenant, body)
        note = body.decode() + "\n" + signature_line(origin, sig.public_key, sig.signature)
        lean.run(
            conn,
            _INSERT_CHECKPOINT,
            {
                "tenant_id": tenant,
                "tree_size": size,
                "root_hash": root,
                "note": note,
                "kid": sig.kid,
                "created_us": now_us,
            },
        )
        return SignedCheckpoint(size, root, note, sig.kid)

    # -- reads -------------------------------------------------------------------------------
    def latest_checkpoint(self, conn: Connection, tenant: str) -> SignedCheckpoint:
        found = self.newest_checkpoint(conn, tenant)
        if found is None:
            raise NotFound("the ledger has no checkpoint yet: record a consent event first")
        return found

    def newest_checkpoint(self, conn: Connection, tenant: str) -> SignedCheckpoint | None:
        row = conn.execute(
            select(checkpoints)
            .where(checkpoints.c.tenant_id == tenant)
            .order_by(checkpoints.c.tree_size.desc())
            .limit(1)
        ).one_or_none()
        if row is None:
            return None
        return SignedCheckpoint(int(row.tree_size), bytes(row.root_hash), row.note, row.kid)

    def verifier_keys(self, tenant: str) -> list[str]:
        """Verifier keys, current first, then retired ones (old checkpoints name them)."""
        keys = self._keys.signing_keys(tenant)
        ordered = sorted(
            keys, key=lambda k: (k.retired_at is not None, k.created_at), reverse=False
        )
        return [verifier_key(self.origin(tenant), k.public_key) for k in ordered]

    def entry(self, conn: Connection, tenant: str, seq: int) -> tuple[bytes, bytes]:
        row = conn.execute(
            select(ledger_entries.c.leaf, ledger_entries.c.leaf_hash).where(
                ledger_entries.c.tenant_id == tenant, ledger_entries.c.seq == seq
            )
        ).one_or_none()
        if row is None:
            raise NotFound(f"no ledger entry {seq}")
        return bytes(row.leaf), bytes(row.leaf_hash)

    def _fetch(
        self, conn: Connection, tenant: str, coords: set[merkle.Coord]
    ) -> dict[merkle.Coord, bytes]:
        """Every hash in ``coords`` in one round trip.

        One branch per level (``level = ? AND idx IN (...)``, leaves from the leaf table) in
        a UNION ALL: each branch is a primary-key search on both engines, where a row-value
        IN list or an OR of branches makes SQLite scan the tenant's node range. The SQL is
        plain text: a proof's shape varies, and building it as expressions cost more than
        the queries themselves."""
        by_level: dict[int, list[int]] = {}
        for level, idx in coords:
            by_level.setdefault(level, []).append(idx)
        parts: list[str] = []
        params: dict[str, Any] = {"t": tenant}
        for level, idxs in sorted(by_level.items()):
            names = []
            for n, idx in enumerate(idxs):
                params[f"i{level}_{n}"] = idx
                names.append(f":i{level}_{n}")
            # Only generated placeholder names are interpolated; every value is bound.
            in_list = ", ".join(names)
            if level == 0:
                parts.append(
                    "SELECT 0 AS level, seq AS idx, leaf_hash AS hash FROM ledger_entries "  # noqa: S608
                    f"WHERE tenant_id = :t AND seq IN ({in_list})"
                )
            else:
                params[f"l{level}"] = level
                parts.append(
                    "SELECT level, idx, hash FROM ledger_nodes WHERE tenant_id = :t "  # noqa: S608
                    f"AND level = :l{level} AND idx IN ({in_list})"
                )
        found: dict[merkle.Coord, bytes] = {}
        if parts:
            for level, idx, value in conn.execute(text(" UNION ALL ".join(parts)), params):
                found[(int(level), int(idx))] = bytes(value)
        missing = coords - found.keys()
        if missing:
            raise RuntimeError(f"ledger nodes missing for a proof: {sorted(missing)[:4]}")
        return found

    def _checkpointed_size(self, conn: Connection, tenant: str, tree_size: int | None) -> int:
        current = self.tree_size(conn, tenant)
        if tree_size is None:
            return current
        if tree_size > current:
            raise InvalidInput(
                f"tree_size {tree_size} is beyond the current tree size {current}",
                field="tree_size",
            )
        return tree_size

    def inclusion_proof(
        self, conn: Connection, tenant: str, seq: int, tree_size: int | None
    ) -> tuple[int, bytes, list[bytes]]:
        size = self._checkpointed_size(conn, tenant, tree_size)
        if not 0 <= seq < size:
            raise InvalidInput(f"seq must be in [0, {size})", field="seq")
        plan = merkle.inclusion_proof_plan(seq, size)
        lookup = self._fetch(conn, tenant, merkle.plan_coords(plan) | {(0, seq)})
        return size, lookup[(0, seq)], merkle.build_proof(plan, lookup)

    def inclusion_proofs(
        self, conn: Connection, tenant: str, seqs: Sequence[int], tree_size: int
    ) -> dict[int, list[bytes]]:
        """Proofs of many leaves against one tree size, their nodes fetched together: a
        subject's export needs hundreds, and one round trip each would dominate it."""
        size = self._checkpointed_size(conn, tenant, tree_size)
        plans: dict[int, list[list[merkle.Coord]]] = {}
        for seq in seqs:
            if not 0 <= seq < size:
                raise InvalidInput(f"seq must be in [0, {size})", field="seq")
            plans[seq] = merkle.inclusion_proof_plan(seq, size)
        wanted = sorted(set().union(*(merkle.plan_coords(p) for p in plans.values())))
        lookup: dict[merkle.Coord, bytes] = {}
        for start in range(0, len(wanted), 2000):  # bound the statement's parameter count
            lookup.update(self._fetch(conn, tenant, set(wanted[start : start + 2000])))
        return {seq: merkle.build_proof(plan, lookup) for seq, plan in plans.items()}

    def consistency_proof(
        self, conn: Connection, tenant: str, first: int, second: int
    ) -> list[bytes]:
        self._checkpointed_size(conn, tenant, second)
        if not 0 < first <= second:
            raise InvalidInput("first must satisfy 0 < first <= second", field="first")
        plan = merkle.consistency_proof_plan(first, second)
        return merkle.build_proof(plan, self._fetch(conn, tenant, merkle.plan_coords(plan)))

    def root_at(self, conn: Connection, tenant: str, size: int) -> bytes:
        """The root of the first ``size`` leaves, from stored nodes."""
        if size == 0:
            return merkle.EMPTY_ROOT
        coords = merkle.range_coords(0, size)
        lookup = self._fetch(conn, tenant, set(coords))
        return merkle.fold_right([lookup[c] for c in coords])
