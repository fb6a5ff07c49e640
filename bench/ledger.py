"""Figure 1: ledger appends/s, through the real ingest path and through the ledger layer
alone, beside a raw bulk insert of the same rows into a plain table."""

from __future__ import annotations

import cProfile
import io
import pstats
import time
from dataclasses import dataclass
from pathlib import Path

from bench import data
from bench.backends import Backend, Row
from bench.common import Figure, latency_summary
from bench.config import Sizes
from consentgate.bootstrap import App
from consentgate.consent.ingest import EventInput
from consentgate.domain.timeutil import to_micros
from consentgate.ledger.store import ENTRY_COLUMNS, NewLeaf
from consentgate.storage.engine import read_tx, write_tx
from consentgate.storage.tables import ledger_heads

FLOORS = {"sqlite": 10_000.0, "postgresql": 5_000.0}
TENANT = "bench"
LEDGER_TENANT = "ledger"


@dataclass
class IngestState:
    phones: list[str]
    hashed_ids: list[str]


def _chunks(items: list[EventInput], size: int) -> list[list[EventInput]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _rate(rows: int, seconds: list[float]) -> float:
    return rows / sum(seconds)


def run(
    backend: Backend, core: App, sizes: Sizes, profile_dir: Path | None
) -> tuple[list[Figure], IngestState]:
    core.tenants.create(TENANT, "GB")
    core.tenants.create(LEDGER_TENANT, "GB")
    phones = data.phone_numbers(sizes.subjects, seed=1)
    total = (sizes.warmup_batches + sizes.batches) * sizes.batch_size
    batches = _chunks(data.events(phones, total, seed=2, tag="bench"), sizes.batch_size)
    warm = sizes.warmup_batches
    timed_rows = sizes.batches * sizes.batch_size

    # -- the real ingest path ----------------------------------------------------------------
    ingest_times: list[float] = []
    hashed: set[str] = set()
    analyzed = None
    for i, batch in enumerate(batches):
        if i == warm:
            analyzed = backend.analyze()
        t0 = time.perf_counter()
        results = core.ingest.ingest(TENANT, "GB", batch, batch=True)
        elapsed = time.perf_counter() - t0
        if i >= warm:
            ingest_times.append(elapsed)
        if not all(r.created for r in results):
            raise RuntimeError("benchmark events were not all recorded as new")
        hashed.update(r.hashed_id for r in results)

    # The rows ingest wrote, exactly: the ledger layer and the baseline reuse them.
    conn = backend.connect()
    try:
        sql = (
            f"SELECT {', '.join(ENTRY_COLUMNS)} FROM ledger_entries "
            f"WHERE tenant_id = {backend.param} ORDER BY seq"
        )
        rows: list[Row] = [
            tuple(bytes(v) if isinstance(v, memoryview) else v for v in r)
            for r in conn.execute(sql, (TENANT,)).fetchall()
        ]
    finally:
        conn.close()
    if len(rows) != total:
        raise RuntimeError(f"expected {total} ledger rows, found {len(rows)}")
    row_batches = [rows[i : i + sizes.batch_size] for i in range(0, total, sizes.batch_size)]

    # -- the ledger layer alone: LedgerStore.append with prepared NewLeaf rows -----------------
    leaf_batches = [
        [
            NewLeaf(
                seq=r[1],
                event_id=r[2],
                subject_ref=r[3],
                consent_type=r[4],
                status=r[5],
                ts_us=r[6],
                received_us=r[7],
                consent_id=r[8],
                content_hash=r[9],
                leaf=r[10],
            )
            for r in chunk
        ]
        for chunk in row_batches
    ]
    ledger_times: list[float] = []
    for i, leaves in enumerate(leaf_batches):
        now_us = to_micros(core.clock.now())
        t0 = time.perf_counter()
        with write_tx(core.engine) as wconn:
            head = core.ledger.lock_head(wconn, LEDGER_TENANT)
            hashes, _ = core.ledger.append(wconn, LEDGER_TENANT, head, leaves, now_us)
        elapsed = time.perf_counter() - t0
        if i >= warm:
            ledger_times.append(elapsed)
        if hashes != [r[11] for r in row_batches[i]]:
            raise RuntimeError("ledger layer computed other leaf hashes than ingest did")
    with read_tx(core.engine) as rconn:
        roots = dict(
            rconn.execute(
                ledger_heads.select().with_only_columns(
                    ledger_heads.c.tenant_id, ledger_heads.c.root_hash
                )
            ).all()
        )
    if bytes(roots[TENANT]) != bytes(roots[LEDGER_TENANT]):
        raise RuntimeError("same leaves, different roots: the ledger layer run is not comparable")

    # -- baseline: the same rows, bare driver, plain table, one transaction per batch ----------
    plain_times = backend.plain_insert(row_batches)[warm:]
    baseline = _rate(timed_rows, plain_times)
    baseline_title = (
        "sqlite3.executemany → plain table"
        if backend.name == "sqlite"
        else "psycopg COPY → plain table"
    )

    profile_file = None
    if profile_dir is not None:
        profile_file = _profile_ingest(backend, core, phones, sizes, profile_dir)

    common = {
        "batch_size": sizes.batch_size,
        "timed_batches": sizes.batches,
        "warmup_batches_excluded": warm,
        "timed_rows": timed_rows,
        "baseline_batch_ms": latency_summary(plain_times),
        "baseline_includes": "same ledger_entries rows (PK, unique, index; no FK), "
        "one committed transaction per batch",
    }
    ingest_fig = Figure(
        backend.name,
        "ingest",
        "appends/s, core.ingest.ingest(batch=True)",
        "appends/s",
        value=_rate(timed_rows, ingest_times),
        baseline_title=baseline_title,
        baseline=baseline,
        floor=FLOORS[backend.name],
        floor_kind="min",
        details={
            **common,
            "subjects": len(hashed),
            "statistics": f"after the warm-up: {analyzed}"
            if analyzed
            else "as the service left them",
            "batch_ms": latency_summary(ingest_times),
            "includes": "validation, phone parsing + keyed hashing, subject links, idempotency "
            "lookup, RFC 8785 leaves, Merkle nodes, state upsert, one signed checkpoint/batch",
            **({"cprofile": str(profile_file)} if profile_file else {}),
        },
    )
    ledger_fig = Figure(
        backend.name,
        "ledger_append",
        "appends/s, LedgerStore.append alone",
        "appends/s",
        value=_rate(timed_rows, ledger_times),
        baseline_title=baseline_title,
        baseline=baseline,
        floor=FLOORS[backend.name],
        floor_kind="min",
        details={
            **common,
            "batch_ms": latency_summary(ledger_times),
            "includes": "write_tx, head lock, leaf hashes, Merkle nodes, head update, "
            "one signed checkpoint/batch",
        },
    )
    return [ingest_fig, ledger_fig], IngestState(phones, sorted(hashed))


def _profile_ingest(
    backend: Backend, core: App, phones: list[str], sizes: Sizes, profile_dir: Path
) -> Path:
    """cProfile of a few extra ingest batches (not part of any figure)."""
    batches = _chunks(data.events(phones, 5 * sizes.batch_size, seed=9, tag="prof"), 1000)
    profiler = cProfile.Profile()
    profiler.enable()
    for batch in batches:
        core.ingest.ingest(TENANT, "GB", batch, batch=True)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(40)
    stats.sort_stats("tottime").print_stats(25)
    profile_dir.mkdir(parents=True, exist_ok=True)
    path = profile_dir / f"ingest-{backend.name}.txt"
    path.write_text(out.getvalue())
    return path
