"""Figure 4: inclusion-proof time on a large tree, from the stored nodes through
LedgerStore.inclusion_proof, every timed proof verified against the signed checkpoint root.

Baseline: the same proof (same tree size, same nodes, same fold) fetched with the bare driver
by primary key (one point lookup per node, UNION ALL-ed into one statement). For a few proofs
the SQL the service actually sent is captured and replayed through the bare driver, and its
query plans are recorded, so a gap can be placed in the database or in Python.

The tree is built by the bench's bulk loader unless ``tree_build == "append"``: it runs the
code LedgerStore.append runs for every leaf (``merkle.leaf_hash``, ``CompactRange.append``)
and writes the leaf and node rows with the driver's bulk path, then sets the head (size, root,
frontier) as append would; the last batch goes through LedgerStore.append itself, which
continues from that head, stores its nodes and signs the checkpoint every proof is checked
against. Proofs are then read only from stored rows.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import event

from bench import data
from bench.backends import Backend, Row
from bench.common import Figure, latency_summary
from bench.config import Sizes
from consentgate.bootstrap import App
from consentgate.domain.timeutil import to_micros
from consentgate.ledger import merkle
from consentgate.ledger.checkpoint import verify_note
from consentgate.ledger.store import ENTRY_COLUMNS, NODE_COLUMNS, NewLeaf
from consentgate.storage.engine import read_tx, write_tx

TENANT = "tree"
FLOOR_MS = 5.0


# Makes the leaves [start, start + count) of a tree, given the receive time.
LeafMaker = Callable[[int, int, int], Iterable[NewLeaf]]


def _append(core: App, start: int, count: int, now_us: int, tenant: str, make: LeafMaker) -> None:
    chunk = list(make(start, count, now_us))
    with write_tx(core.engine) as conn:
        head = core.ledger.lock_head(conn, tenant)
        core.ledger.append(conn, tenant, head, chunk, now_us)


def _rows(
    frontier: merkle.CompactRange,
    start: int,
    count: int,
    now_us: int,
    tenant: str,
    make: LeafMaker,
) -> tuple[list[Row], list[Row]]:
    """Leaf and node rows exactly as LedgerStore.append makes them (advances ``frontier``)."""
    entries: list[Row] = []
    nodes: list[Row] = []
    for leaf in make(start, count, now_us):
        digest = merkle.leaf_hash(leaf.leaf)
        entries.append(
            (
                tenant,
                leaf.seq,
                leaf.event_id,
                leaf.subject_ref,
                leaf.consent_type,
                leaf.status,
                leaf.ts_us,
                leaf.received_us,
                leaf.consent_id,
                leaf.content_hash,
                leaf.leaf,
                digest,
            )
        )
        for (level, idx), value in frontier.append(digest):
            nodes.append((tenant, level, idx, value))
    return entries, nodes


def build_tree(
    backend: Backend,
    core: App,
    leaves: int,
    sizes: Sizes,
    *,
    tenant: str = TENANT,
    make: LeafMaker = data.synthetic_leaves,
) -> dict[str, Any]:
    """A tenant whose ledger holds ``leaves`` leaves made by ``make`` (see the module doc)."""
    core.tenants.create(tenant, None)
    now_us = to_micros(core.clock.now())
    batch = sizes.tree_batch
    last = max(0, leaves - batch) if sizes.tree_build == "bulk" else 0
    t_start = time.perf_counter()
    if last:
        frontier = merkle.CompactRange()
        starts = list(range(0, last, batch))
        conn = backend.connect()
        # One thread makes batch k+1's rows while the database takes batch k.
        with ThreadPoolExecutor(max_workers=1) as pool:
            try:
                pending = pool.submit(_rows, frontier, 0, min(batch, last), now_us, tenant, make)
                for k in range(len(starts)):
                    entries, nodes = pending.result()
                    if k + 1 < len(starts):
                        nxt = starts[k + 1]
                        pending = pool.submit(
                            _rows, frontier, nxt, min(batch, last - nxt), now_us, tenant, make
                        )
                    backend.begin(conn)
                    backend.bulk_insert(conn, "ledger_entries", ENTRY_COLUMNS, entries)
                    backend.bulk_insert(conn, "ledger_nodes", NODE_COLUMNS, nodes)
                    backend.commit(conn)
                p = backend.param
                backend.begin(conn)
                conn.execute(
                    f"UPDATE ledger_heads SET tree_size = {p}, root_hash = {p}, frontier = {p} "
                    f"WHERE tenant_id = {p}",
                    (frontier.size, frontier.root(), b"".join(frontier.hashes), tenant),
                )
                backend.commit(conn)
            finally:
                conn.close()
    for start in range(last, leaves, batch):
        _append(core, start, min(batch, leaves - start), now_us, tenant, make)
    elapsed = time.perf_counter() - t_start
    return {
        "method": "bulk loader + final batch via LedgerStore.append"
        if last
        else "LedgerStore.append in write_tx batches",
        "leaves": leaves,
        "leaves_via_ledger_append": leaves - last,
        "batch": batch,
        "seconds": round(elapsed, 2),
        "leaves_per_s": round(leaves / elapsed),
    }


def _captured_proof_sql(core: App, seq: int) -> list[tuple[str, Any]]:
    """The SELECTs LedgerStore.inclusion_proof sends for ``seq``, with their parameters."""
    captured: list[tuple[str, Any]] = []

    def capture(*args: Any) -> None:
        statement, parameters = args[2], args[3]
        if statement.lstrip().upper().startswith("SELECT") and "ledger_" in statement:
            captured.append((statement, parameters))

    event.listen(core.engine, "before_cursor_execute", capture)
    try:
        with read_tx(core.engine) as conn:
            core.ledger.inclusion_proof(conn, TENANT, seq, None)
    finally:
        event.remove(core.engine, "before_cursor_execute", capture)
    return captured


def run(backend: Backend, core: App, leaves: int, sizes: Sizes) -> list[Figure]:
    build = build_tree(backend, core, leaves, sizes)
    analyzed = backend.analyze()
    build["statistics"] = f"after the build: {analyzed}" if analyzed else "as the service left them"

    with read_tx(core.engine) as conn:
        checkpoint = core.ledger.latest_checkpoint(conn, TENANT)
        root_from_nodes = core.ledger.root_at(conn, TENANT, leaves)
    signed = verify_note(checkpoint.note, core.ledger.verifier_keys(TENANT))
    if signed.size != leaves or signed.root_hash != checkpoint.root_hash:
        raise RuntimeError("the signed checkpoint does not describe the tree that was built")
    if root_from_nodes != signed.root_hash:
        raise RuntimeError("the root folded from stored nodes is not the signed root")
    root = signed.root_hash

    rng = random.Random(5)
    seqs = rng.sample(range(leaves), sizes.proof_warmup + sizes.proofs)
    warm, candidates = seqs[: sizes.proof_warmup], seqs[sizes.proof_warmup :]
    ledger = core.ledger
    engine = core.engine

    for seq in warm:
        with read_tx(engine) as conn:
            ledger.inclusion_proof(conn, TENANT, seq, None)
    times: list[float] = []
    proofs: list[tuple[int, bytes, list[bytes]]] = []
    timed: list[int] = []
    clock = time.perf_counter
    t_start = clock()
    for seq in candidates:
        t0 = clock()
        with read_tx(engine) as conn:
            proof = ledger.inclusion_proof(conn, TENANT, seq, None)
        times.append(clock() - t0)
        proofs.append(proof)
        timed.append(seq)
        if clock() - t_start > sizes.proof_seconds:
            break

    # Every timed proof verifies against the signed root; a sample of leaves is re-hashed.
    for seq, (size, leaf_hash, hashes) in zip(timed, proofs, strict=True):
        merkle.verify_inclusion(leaf_hash, seq, size, hashes, root)
    with read_tx(engine) as conn:
        for seq in timed[:50]:
            leaf, stored = ledger.entry(conn, TENANT, seq)
            if merkle.leaf_hash(leaf) != stored:
                raise RuntimeError(f"leaf {seq} does not hash to its stored leaf_hash")

    raw_conn = backend.connect()
    try:
        for seq in warm:
            backend.raw_proof(raw_conn, TENANT, seq)
        raw_times: list[float] = []
        for seq, expected in zip(timed, proofs, strict=True):
            t0 = clock()
            got = backend.raw_proof(raw_conn, TENANT, seq)
            raw_times.append(clock() - t0)
            if got != expected:
                raise RuntimeError("raw baseline produced a different proof")
        # The service's own SQL, captured as it ran, replayed through the bare driver: splits
        # a gap between "the database" and "the Python around it".
        diag_times: list[float] = []
        plans: dict[str, str] = {}
        for seq in timed[: sizes.proof_diag]:
            statements = _captured_proof_sql(core, seq)
            backend.replay(raw_conn, statements)  # warm
            t0 = clock()
            backend.replay(raw_conn, statements)
            diag_times.append(clock() - t0)
            if not plans:
                for sql, params in statements:
                    plans[" ".join(sql.split())[:120]] = backend.explain(raw_conn, sql, params)
    finally:
        raw_conn.close()

    lat, raw = latency_summary(times), latency_summary(raw_times)
    capped = len(timed) < len(candidates)
    details = {
        "tree_build": build,
        "proofs_timed": len(timed),
        "proofs_planned": len(candidates),
        "time_capped": f"stopped after {sizes.proof_seconds:.0f} s" if capped else False,
        "warmup_excluded": len(warm),
        "verified": f"{len(timed)}/{len(timed)} verify_inclusion against the signed "
        f"checkpoint root (tree_size {leaves}); 50 leaves re-hashed; root_at from stored "
        "nodes equals the signed root",
        "proof_hashes": len(proofs[0][2]),
        "latency": lat,
        "baseline_latency": raw,
        "service_sql_replayed_bare_driver_latency": latency_summary(diag_times),
        "query_plans": plans,
        "includes": "read_tx, tree size, plan, 2 indexed queries (leaves, nodes), fold",
    }
    title = f"inclusion proof {{q}}, {leaves:,} leaves"
    baseline_title = "same nodes by PK + fold, bare driver"
    return [
        Figure(
            backend.name,
            f"proof_{q}",
            title.format(q=q),
            "ms",
            value=lat[f"{q}_ms"],
            baseline_title=baseline_title,
            baseline=raw[f"{q}_ms"],
            floor=FLOOR_MS,
            floor_kind="max",
            details=details if q == "p50" else {"see": "proof_p50 details"},
        )
        for q in ("p50", "p99")
    ]
