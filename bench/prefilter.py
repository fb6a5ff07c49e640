"""Figures 14-15: a campaign audience of 1,000,000 raw phone numbers pre-filtered for
"marketing_rcs", through the service's bulk path, every step timed at the full audience:
``identity.normalise_phones(raw, "GB")`` (the fast path compiled from phonenumbers'
metadata, full parse for what it leaves undecided), ``core.links.current_hashes`` (the key
store's ``keyed_hash_many``), then ``core.gate.prefilter(tenant, hashed_ids,
"marketing_rcs")`` with the plan it chooses by size. Floor: the whole 1M pre-filter ≤ 5 s.

For context (not in the figure): the full parse (``normalise_phone``: phonenumbers parse +
validity) timed on a spread sample of ``prefilter_normalise`` numbers — what normalisation
cost before the fast path, extrapolated and labelled as such — with a breakdown of its steps;
and both pre-filter plans forced in turn on the same ids, to show what the planner avoided.

The store: ``prefilter_subjects`` subjects of the audience have consent state (75 %
marketing_rcs granted, 15 % withdrawn, 10 % only another purpose; every other subject also
transactional_rcs). The first ``prefilter_ingested`` are recorded through
``core.ingest.ingest``; the rest are bulk-loaded (untimed, driver bulk path) as the same
subject_links rows (``core.links.hash_identifier`` of the E.164 number, one id at a time:
an independent check of the bulk hashing) and consent_state rows (expiry by the purpose
catalogue, as ``upsert_state`` computes it). The bulk-loaded state rows name ledger seqs
past the tenant's tree: the pre-filter reads only subject_links and consent_state.
Ingesting 200,000 subjects through the service would take minutes per backend (see the
ingest figure) and is not what is measured here.

Baseline, same run, same strings and ids: ``hmac.digest(key, e164, "sha256").hex()`` of the
1M E.164 strings (a random 32-byte key: the tenant's salt never leaves the key store) + the
bare driver loading the same hashed ids into a temporary table (``executemany`` / ``COPY``)
and running the same join, all rows fetched.
"""

from __future__ import annotations

import hmac
import os
import random
import time
import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

import phonenumbers
from sqlalchemy import event

from bench.backends import LINK_COLUMNS, STATE_COLUMNS, Backend, Row
from bench.common import Figure, load_average
from bench.config import Sizes
from consentgate.bootstrap import App
from consentgate.consent.ingest import EventInput
from consentgate.domain import consent as rules
from consentgate.domain.consent import ConsentStatus, StateEntry
from consentgate.domain.identity import (
    Identifier,
    IdentifierKind,
    normalise_phone,
    normalise_phones,
)
from consentgate.domain.reasons import ReasonCode
from consentgate.domain.timeutil import from_micros, to_micros
from consentgate.gate import prefilter as prefilter_plans
from consentgate.gate.cache import StateCache
from consentgate.gate.gate import ConsentGate
from consentgate.gate.prefilter import Plan

TENANT = "aud"
PURPOSE = "marketing_rcs"
FLOOR_S = 5.0
RELAXED_TIMEOUT = timedelta(seconds=120)
_RELAXED_NOTE = (
    "; core.gate FAILED CLOSED (statement timeout): timed with a 120 s statement timeout"
)
_FAILED_NOTE = (
    "; core.gate FAILED CLOSED (statement timeout): time until its store_unavailable answer"
)
BLOCK = 100_000  # numbers per 5-digit national prefix ("7xxxx" + 5 digits)
_JOIN = (
    "SELECT a.hashed_id, s.status, s.event_seq, s.expires_us FROM {table} a "
    "JOIN subject_links l ON l.tenant_id = {p} AND l.hashed_id = a.hashed_id "
    "JOIN consent_state s ON s.tenant_id = l.tenant_id "
    "AND s.subject_ref = l.subject_ref AND s.consent_type = {p}"
)


def _blocks(count: int, seed: int) -> list[str]:
    """Enough 5-digit GB mobile prefixes whose numbers phonenumbers takes as valid (20
    random numbers of each checked; the timed normalisation counts any invalid one)."""
    rng = random.Random(seed)
    candidates = [f"{p}{d}" for p in range(7400, 8000) for d in range(10)]
    rng.shuffle(candidates)
    wanted = -(-count // BLOCK)
    found: list[str] = []
    for prefix in candidates:
        sample = (f"+44{prefix}{rng.randrange(BLOCK):05d}" for _ in range(20))
        if all(phonenumbers.is_valid_number(phonenumbers.parse(n)) for n in sample):
            found.append(prefix)
            if len(found) == wanted:
                return sorted(found)
    raise RuntimeError("not enough valid GB mobile prefixes")


def audience(count: int, seed: int = 51) -> tuple[list[str], list[str]]:
    """(raw national numbers "07xxx xxxxxx", their E.164 forms), shuffled, distinct."""
    e164 = [f"+44{b}{i:05d}" for b in _blocks(count, seed) for i in range(BLOCK)]
    random.Random(seed + 1).shuffle(e164)
    e164 = e164[:count]
    raw = [f"0{n[3:7]} {n[7:]}" for n in e164]
    return raw, e164


def _kind(k: int) -> str:
    """The state of subject ``k``: 75 % granted, 15 % withdrawn, 10 % no marketing row."""
    r = k % 20
    return "granted" if r < 15 else "withdrawn" if r < 18 else "none"


def _load(
    backend: Backend, core: App, raw: list[str], e164: list[str], sizes: Sizes
) -> dict[str, Any]:
    """The tenant's consent state (untimed): see the module docstring."""
    t_start = time.perf_counter()
    core.tenants.create(TENANT, "GB")
    now = core.clock.now()
    effective = now - timedelta(days=30)
    stamp = effective.strftime("%Y-%m-%dT%H:%M:%SZ")
    subjects = min(sizes.prefilter_subjects, len(e164))
    ingested = min(sizes.prefilter_ingested, subjects)

    def purposes(k: int) -> list[tuple[str, str]]:
        out = [] if _kind(k) == "none" else [(PURPOSE, _kind(k))]
        if _kind(k) == "none" or k % 2 == 0:
            out.append(("transactional_rcs" if k % 2 == 0 else "analytics", "granted"))
        return out

    events = [
        EventInput(
            consent_id=f"aud-{k:07d}-{purpose}",
            consent_type=purpose,
            status=status,
            timestamp=stamp,
            source="web",
            phone=raw[k],
        )
        for k in range(ingested)
        for purpose, status in purposes(k)
    ]
    for start in range(0, len(events), 1000):
        core.ingest.ingest(TENANT, "GB", events[start : start + 1000], batch=True)

    catalogue = core.tenants.catalogue(TENANT)
    salt_version = core.keystore.salt_versions(TENANT)[-1]
    hash_identifier = core.links.hash_identifier
    now_us, effective_us = to_micros(now), to_micros(effective)
    seq = len(events)  # past the tenant's tree: see the module docstring
    rng = random.Random(52)
    links: list[Row] = []
    states: list[Row] = []
    for k in range(ingested, subjects):
        ref = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        hashed = hash_identifier(TENANT, Identifier(IdentifierKind.PHONE, e164[k])).current
        links.append((TENANT, hashed, salt_version, ref, now_us))
        for purpose, status in purposes(k):
            entry = StateEntry(ConsentStatus(status), from_micros(effective_us), seq, "")
            expiry = rules.expires_at(entry, catalogue[purpose].max_age)
            states.append(
                (
                    TENANT,
                    ref,
                    purpose,
                    status,
                    effective_us,
                    seq,
                    f"aud-{k:07d}-{purpose}",
                    None if expiry is None else to_micros(expiry),
                    now_us,
                )
            )
            seq += 1
    conn = backend.connect()
    try:
        for start in range(0, max(len(links), len(states)), 50_000):
            backend.begin(conn)
            backend.bulk_insert(conn, "subject_links", LINK_COLUMNS, links[start : start + 50_000])
            backend.bulk_insert(
                conn, "consent_state", STATE_COLUMNS, states[start : start + 50_000]
            )
            backend.commit(conn)
        counts = {
            table: int(
                conn.execute(
                    f"SELECT count(*) FROM {table} WHERE tenant_id = {backend.param}", (TENANT,)
                ).fetchone()[0]
            )
            for table in ("subject_links", "consent_state")
        }
    finally:
        conn.close()
    analyzed = backend.analyze()
    kinds = Counter(_kind(k) for k in range(subjects))
    return {
        "subjects_with_state": subjects,
        "ingested_through_core_ingest": ingested,
        "events_ingested": len(events),
        "bulk_loaded_subjects": subjects - ingested,
        "rows_in_store": counts,
        "marketing_rcs": dict(kinds),
        "effective": stamp,
        "statistics": analyzed or "as loaded",
        "setup_s": round(time.perf_counter() - t_start, 1),
    }


def _normalise_breakdown(raw: list[str], rounds: int = 3) -> dict[str, Any]:
    """Where normalise_phone's time goes, per number (µs), on ``raw`` (a small sample): each
    step alone over the same numbers, in ``rounds`` alternating rounds, the fastest round of
    each kept (the least disturbed by other work on the machine)."""
    clock = time.perf_counter
    parse = phonenumbers.parse
    parsed = [parse(r, "GB") for r in raw]
    steps: dict[str, Any] = {
        "phonenumbers.parse": lambda: [parse(r, "GB") for r in raw],
        "is_possible_number": lambda: [phonenumbers.is_possible_number(p) for p in parsed],
        "is_valid_number": lambda: [phonenumbers.is_valid_number(p) for p in parsed],
        "format_number(E164)": lambda: [
            phonenumbers.format_number(p, phonenumbers.PhoneNumberFormat.E164) for p in parsed
        ],
        "normalise_phone": lambda: [normalise_phone(r, "GB") for r in raw],
    }
    best = {name: float("inf") for name in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            t0 = clock()
            fn()
            best[name] = min(best[name], (clock() - t0) / len(raw) * 1e6)
    whole = best.pop("normalise_phone")
    return {
        "numbers": len(raw),
        "rounds": rounds,
        "normalise_phone_us": whole,
        "parts_us": best,
        "rest_us": whole - sum(best.values()),
        "what": "the full parse, per number, fastest of the rounds; rest = normalise_phone's "
        "own checks and the Identifier",
    }


def _sql_timer(core: App) -> tuple[dict[str, float], list[dict[str, Any]], Any]:
    """Seconds the engine spent in the driver per statement kind (cursor execute → back),
    and the statements that raised (kind, seconds until they did, error)."""
    spent: dict[str, float] = {}
    failed: list[dict[str, Any]] = []
    started: list[float] = []

    def kind(statement: str) -> str:
        return statement.lstrip().split(None, 1)[0].upper()

    def before(*_args: Any) -> None:
        started.append(time.perf_counter())

    def after(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        elapsed = time.perf_counter() - started.pop()
        spent[kind(statement)] = spent.get(kind(statement), 0.0) + elapsed

    def error(context: Any) -> None:
        elapsed = time.perf_counter() - started.pop() if started else None
        failed.append(
            {
                "statement": kind(context.statement or "?"),
                "seconds": elapsed,
                "error": f"{type(context.original_exception).__name__}: "
                f"{str(context.original_exception).strip()[:200]}",
            }
        )

    event.listen(core.engine, "before_cursor_execute", before)
    event.listen(core.engine, "after_cursor_execute", after)
    event.listen(core.engine, "handle_error", error)

    def remove() -> None:
        event.remove(core.engine, "before_cursor_execute", before)
        event.remove(core.engine, "after_cursor_execute", after)
        event.remove(core.engine, "handle_error", error)

    return spent, failed, remove


def _timed_prefilter(
    core: App, gate: ConsentGate, hashed: list[str], plan: Plan | None = None
) -> dict[str, Any]:
    with core.engine.connect() as conn:  # what the gate will choose (untimed, same rule)
        chosen = plan or prefilter_plans.choose(conn, TENANT, len(set(hashed)))
    spent, failed, remove = _sql_timer(core)
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        decisions = gate.prefilter(TENANT, hashed, PURPOSE, plan=plan)
        seconds, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    finally:
        remove()
    outcome = Counter(
        "allowed" if d.allowed else (d.reason or ReasonCode.NO_CONSENT).value
        for d in decisions.values()
    )
    sql_s = sum(spent.values())
    return {
        "ids": len(hashed),
        "plan": chosen.value if plan else f"{chosen.value} (chosen by size)",
        "seconds": seconds,
        "cpu_s": cpu_s,
        "decisions": dict(outcome),
        "sql_by_statement_s": spent,
        "sql_s": sql_s,
        "python_s": seconds - sql_s,
        "failed_statements": failed,
    }


def _bare_join(backend: Backend, hashed: list[str]) -> dict[str, Any]:
    p = backend.param
    conn = backend.connect()
    clock = time.perf_counter
    try:
        t0 = clock()
        backend.begin(conn)
        backend.temp_table(conn, "bench_audience")
        for start in range(0, len(hashed), 100_000):
            backend.bulk_insert(
                conn,
                "bench_audience",
                ("hashed_id",),
                [(h,) for h in hashed[start : start + 100_000]],
            )
        t1 = clock()
        rows = conn.execute(_JOIN.format(table="bench_audience", p=p), (TENANT, PURPOSE)).fetchall()
        t2 = clock()
        conn.execute("DROP TABLE bench_audience")
        backend.commit(conn)
        t3 = clock()
    finally:
        conn.close()
    return {
        "seconds": t3 - t0,
        "load_s": t1 - t0,
        "join_s": t2 - t1,
        "drop_commit_s": t3 - t2,
        "rows": len(rows),
        "granted_rows": sum(1 for r in rows if r[1] == "granted"),
        "load_method": "sqlite3 executemany" if backend.name == "sqlite" else "psycopg COPY",
    }


def run(backend: Backend, core: App, sizes: Sizes) -> list[Figure]:
    count = sizes.prefilter_audience
    raw, e164 = audience(count)
    setup = _load(backend, core, raw, e164, sizes)
    clock, cpu = time.perf_counter, time.process_time
    load_before = load_average()

    # -- 1. normalisation, full audience, the service's bulk path --------------------------
    t0 = clock()
    normalise_phones(raw[:2_000], "GB")  # warm-up, excluded: compiles the GB metadata once
    compile_s = clock() - t0
    t0, c0 = clock(), cpu()
    normalised = normalise_phones(raw, "GB")
    normalise_s, normalise_cpu = clock() - t0, cpu() - c0
    if normalised.invalid or normalised.values != e164:
        raise RuntimeError(
            f"normalisation disagrees with the generated E.164 ({len(normalised.invalid)} invalid)"
        )
    e164_values = [v for v in normalised.values if v is not None]
    del normalised

    # context: the full parse on a spread sample (what normalisation cost before)
    n_full = min(sizes.prefilter_normalise, count)
    step = count / n_full
    sample = [raw[int(i * step)] for i in range(n_full)]
    for r in sample[: min(2_000, n_full)]:  # warm-up, excluded (phonenumbers metadata)
        normalise_phone(r, "GB")
    t0 = clock()
    for r in sample:
        normalise_phone(r, "GB")
    full_parse_s = clock() - t0
    breakdown = _normalise_breakdown(sample[: min(5_000, n_full)])

    # -- 2. keyed hashing, full audience ----------------------------------------------------
    core.links.current_hashes(TENANT, e164_values[:2_000])  # warm-up, excluded
    t0, c0 = clock(), cpu()
    hashed = core.links.current_hashes(TENANT, e164_values)
    hash_s, hash_cpu = clock() - t0, cpu() - c0
    del e164_values

    # -- 3. core.gate.prefilter, full audience ----------------------------------------------
    core.gate.prefilter(TENANT, hashed[:1_000], PURPOSE)  # warm-up, excluded
    subjects = setup["subjects_with_state"]
    expected = Counter(_kind(k) for k in range(subjects))
    want = {
        "allowed": expected["granted"],
        "withdrawn": expected["withdrawn"],
        "no_consent": count - expected["granted"] - expected["withdrawn"],
    }
    want = {k: v for k, v in want.items() if v}
    service = _timed_prefilter(core, core.gate, hashed)
    failed_closed: dict[str, Any] | None = None
    measured = service
    if service["decisions"] != want:
        if set(service["decisions"]) != {ReasonCode.STORE_UNAVAILABLE.value}:
            raise RuntimeError(f"pre-filter decisions {service['decisions']} != expected {want}")
        # The service's gate failed closed (its statement timeout, on PostgreSQL): that is
        # the result, and its time is the time until that answer. With
        # prefilter_relaxed_rerun, the same class is also built with a statement timeout
        # long enough to finish and timed the same way (labelled as such).
        failed_closed = {
            **service,
            "outcome": f"FAILED CLOSED: store_unavailable for all {count:,} ids",
        }
        if sizes.prefilter_relaxed_rerun:
            relaxed = ConsentGate(
                core.engine, core.clock, StateCache(), statement_timeout=RELAXED_TIMEOUT
            )
            measured = _timed_prefilter(core, relaxed, hashed)
            if measured["decisions"] != want:
                raise RuntimeError(f"decisions {measured['decisions']} != expected {want}")
    prefilter_s = measured["seconds"]
    relaxed_used = failed_closed is not None and measured is not service
    note = _RELAXED_NOTE if relaxed_used else _FAILED_NOTE if failed_closed else ""
    forced: dict[str, Any] = {}
    if not failed_closed:  # each plan in turn on the same ids (context, not in the figure)
        for plan in Plan:
            timed = _timed_prefilter(core, core.gate, hashed, plan)
            if timed["decisions"] != want:
                raise RuntimeError(f"plan {plan}: {timed['decisions']} != expected {want}")
            forced[plan.value] = {
                k: timed[k] for k in ("seconds", "cpu_s", "sql_s", "python_s", "sql_by_statement_s")
            }

    # -- baseline: bare HMAC of the same strings + the same join through the bare driver ------
    key = os.urandom(32)
    digest = hmac.digest
    for s in e164[:2_000]:  # warm-up, excluded
        digest(key, s.encode(), "sha256").hex()
    t0 = clock()
    bare_hashed = [digest(key, s.encode(), "sha256").hex() for s in e164]
    hmac_s = clock() - t0
    del bare_hashed
    join = _bare_join(backend, hashed)
    if join["granted_rows"] != want["allowed"]:
        raise RuntimeError("the bare join and the pre-filter disagree")
    baseline_s = hmac_s + join["seconds"]

    total_s = normalise_s + hash_s + prefilter_s
    label = f"{count:,}"
    parts = {
        "normalise_s": normalise_s,
        "normalise_extrapolated": False,
        "hash_identifier_s": hash_s,
        "prefilter_s": prefilter_s,
        "total_s": total_s,
    }
    common: dict[str, Any] = {
        "audience": count,
        "input_format": 'national, region GB ("07xxx xxxxxx"), distinct, shuffled',
        "setup_untimed": setup,
        "parts": parts,
        "share_of_total": {k: v / total_s for k, v in parts.items() if k.endswith("_s")},
        "cpu_s": {
            "normalise": normalise_cpu,
            "hash": hash_cpu,
            "prefilter": measured["cpu_s"],
            "total": normalise_cpu + hash_cpu + measured["cpu_s"],
            "what": "this process's CPU time (time.process_time) over the same spans: what the "
            "work costs whatever else the machine runs (the figure is wall-clock time; the "
            "database server's CPU is not in it on PostgreSQL)",
        },
        "normalise": {
            "numbers_timed": count,
            "seconds_timed": normalise_s,
            "per_number_us": normalise_s / count * 1e6,
            "path": "identity.normalise_phones(raw, 'GB'): phone_fastpath (phonenumbers' "
            "metadata compiled to regexes), full parse for what it leaves undecided",
            "compile_and_warm_up_s": compile_s,
            "full_parse_for_comparison": {
                "numbers": n_full,
                "sample": f"every {step:g}th number of the audience",
                "per_number_us": full_parse_s / n_full * 1e6,
                "extrapolated_to_audience_s": full_parse_s * count / n_full,
                "what": "normalise_phone (phonenumbers parse + is_possible + is_valid + "
                "format), the path before the fast path; EXTRAPOLATED, not in the figure",
                "breakdown": breakdown,
            },
        },
        "hash_identifier": {
            "ids": count,
            "per_id_us": hash_s / count * 1e6,
            "includes": "core.links.current_hashes: salt versions looked up once, "
            "KeyStore.keyed_hash_many (HMAC-SHA256 from precomputed pad states), hex",
        },
        "prefilter": {
            **measured,
            "gate": "core.gate (the service's, default statement timeout)"
            if not relaxed_used
            else f"ConsentGate(core.engine, core.clock, StateCache(), statement_timeout="
            f"{RELAXED_TIMEOUT.total_seconds():.0f} s): core.gate FAILED CLOSED, see "
            "service_gate_failed_closed",
            "what": "one read transaction: a count of the tenant's links (the plan choice), "
            "then either the tenant's links ⋈ states for the purpose streamed in partitions "
            "into a hash probe of the audience (stream), or a temporary table loaded by "
            "multi-row INSERT / COPY and joined (temp_table); then a GateDecision per "
            "matched id (unmatched ids share one no_consent decision). sql_by_statement_s: "
            "cursor.execute until it returns (SQLAlchemy cursor events); python_s = the rest "
            "(on SQLite the query runs while rows are fetched, so it counts here)",
            "each_plan_forced": forced,
        },
        "service_gate_failed_closed": failed_closed or False,
        "baseline": {
            "hmac_s": hmac_s,
            "hmac_per_id_us": hmac_s / count * 1e6,
            "join": join,
            "what": "hmac.digest(key, e164.encode(), 'sha256').hex() per id; bare driver: "
            "temp table, bulk load of the same hashed ids, same join, all rows fetched, drop",
        },
        "processes": 1,
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }
    total_fig = Figure(
        backend.name,
        "prefilter_total",
        f"{label}-number pre-filter, s: normalise_phones + links.current_hashes + "
        "core.gate.prefilter (all at full size)" + note,
        "s",
        value=total_s,
        baseline_title="bare hmac.digest of the E.164 strings + temp-table join, bare driver",
        baseline=baseline_s,
        floor=FLOOR_S,
        floor_kind="max",
        details=common,
    )
    hashed_fig = Figure(
        backend.name,
        "prefilter_hashed",
        f"{label} E.164 ids pre-filter, s: links.current_hashes + core.gate.prefilter "
        "(no normalisation; measured at full size)" + note,
        "s",
        value=hash_s + prefilter_s,
        baseline_title="bare hmac.digest of the E.164 strings + temp-table join, bare driver",
        baseline=baseline_s,
        floor=FLOOR_S,
        floor_kind="max",
        details={
            "audience": count,
            "hash_identifier_s": hash_s,
            "prefilter_s": prefilter_s,
            "service_gate_failed_closed": failed_closed or False,
            "note": "the part of prefilter_total that is not normalisation, timed at the full "
            "audience; details there",
        },
    )
    return [total_fig, hashed_fig]
