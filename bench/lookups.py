"""Figure 2: in-process state lookups/s (ConsentQueries.by_hashed_id) beside a raw indexed
SELECT of the same subjects' consent_state rows through the same driver."""

from __future__ import annotations

import random
import time

from bench.backends import Backend
from bench.common import Figure, latency_summary
from bench.config import Sizes
from consentgate.bootstrap import App


def run(backend: Backend, core: App, tenant: str, hashed_ids: list[str], sizes: Sizes) -> Figure:
    rng = random.Random(3)
    picks = [rng.choice(hashed_ids) for _ in range(sizes.lookup_warmup + sizes.lookups)]
    warm, planned = picks[: sizes.lookup_warmup], picks[sizes.lookup_warmup :]

    # Same answer from both paths, before anything is timed.
    conn = backend.connect()
    sql = backend.lookup_sql()
    for h in picks[:50]:
        service = set(core.queries.by_hashed_id(tenant, h).consents)
        raw = {r[0] for r in backend.lookup(conn, sql, tenant, h)}
        if service != raw or not raw:
            raise RuntimeError("by_hashed_id and the raw SELECT disagree")

    query = core.queries.by_hashed_id
    for h in warm:
        query(tenant, h)
    service_times: list[float] = []
    clock = time.perf_counter
    t_start = clock()
    for h in planned:
        t0 = clock()
        query(tenant, h)
        t1 = clock()
        service_times.append(t1 - t0)
        if t1 - t_start > sizes.lookup_seconds:
            break
    service_wall = clock() - t_start
    timed = planned[: len(service_times)]

    try:
        for h in warm:
            backend.lookup(conn, sql, tenant, h)
        raw_times: list[float] = []
        t_start = clock()
        for h in timed:
            t0 = clock()
            backend.lookup(conn, sql, tenant, h)
            raw_times.append(clock() - t0)
        raw_wall = clock() - t_start
    finally:
        conn.close()

    return Figure(
        backend.name,
        "lookup",
        "lookups/s, core.queries.by_hashed_id",
        "lookups/s",
        value=len(timed) / service_wall,
        baseline_title="raw indexed SELECT, same driver",
        baseline=len(timed) / raw_wall,
        details={
            "subjects": len(hashed_ids),
            "lookups": len(timed),
            "lookups_planned": len(planned),
            "time_capped": f"stopped after {sizes.lookup_seconds:.0f} s"
            if len(timed) < len(planned)
            else False,
            "warmup_excluded": len(warm),
            "latency": latency_summary(service_times),
            "baseline_latency": latency_summary(raw_times),
            "baseline_sql": backend.lookup_sql(),
            "threads": 1,
            "includes": "all of core.queries.by_hashed_id: read transaction, hashed_id check, "
            "subject link + state read, purpose catalogue, expiry view",
        },
    )
