"""``python -m bench.run``: consentgate's benchmark, on SQLite and a throwaway PostgreSQL.

Figures (each beside a baseline measured in the same run on the same rows, warm-up excluded):

1. ledger appends/s in batches of 1000 through ``core.ingest.ingest(..., batch=True)`` and
   through ``LedgerStore.append`` alone, vs a raw bulk insert of the same rows into a plain
   table (``sqlite3.executemany`` / psycopg ``COPY``); floors ≥ 10,000/s SQLite, ≥ 5,000/s PG;
2. in-process state lookups/s (``core.queries.by_hashed_id``) vs a raw indexed SELECT;
3. HTTP lookups/s, p50, p99 against ``consentgate serve`` vs GET /healthz on that server;
4. inclusion-proof p50/p99 on a 1,000,000-leaf tree vs the same queries in bare SQL;
   floor ≤ 5 ms;
5. signed CMP webhook events/s over HTTP (1 and 50 events per delivery, 8 client processes)
   vs the bare HMAC check + in-process ingest of the same events; floor ≥ 1,500 events/s;
6. receipts issued/s vs bare Ed25519 signing of the same JWS inputs, and receipts verified
   offline/s vs the bare Ed25519 verifications of the same bundles;
7. TC / GPP strings decoded/s vs base64url-decoding the same strings (no database: measured
   once); floor ≥ 20,000 TC strings/s;
8. on-send consent checks/s (``core.gate.check``), warm cache and cold cache, vs a raw
   indexed SELECT on consent_state; floor ≥ 200,000 warm checks/s;
9. envelope seal (``consentgate.crypto.envelope.seal``) per call, both suites, key-store and
   preloaded-key signers, vs bare HPKE ``Suite.encrypt`` (and + one bare Ed25519 sign); no
   database: measured once; floor seal ≤ 1.3 × bare encrypt;
10. a 1,000,000-number campaign pre-filter: normalise + keyed hash + ``core.gate.prefilter``
    vs bare HMAC + a temp-table join on the bare driver; floor ≤ 5 s;
11. end-to-end campaign msgs/s through the server and the sandbox carrier over HTTP vs
    direct POST /v1/messages from 4 client processes; floor ≥ 1,000 msgs/s;
12. outbox relay deliveries/s (claim, sign, POST, record) to a receiver in its own process
    vs bare signed POSTs of the same bodies from the same client; floor ≥ 1,000/s;
13. point-in-time audit: one purpose's whole ``as_of`` answer over a 1,000,000-event ledger
    (``AuditService.consents_stream``) vs the same answer as one bare window query; floor
    ≤ 10 s; and the export bundle of a subject with 1,000 events (``core.exports.export``,
    each bundle verified offline) vs reading its leaves and proof nodes on the bare driver.

``--only PHASES`` merges into an existing results file: figures of phases (and backends)
that were not run are kept as they were, each still naming the run that produced it
(``run``: git head + date); a full run replaces everything.

Sizes scale with ``BENCH_SCALE`` (or ``--scale``; ``--quick`` is 0.1). Results go to
``bench/results.json`` and a Rich table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench import (
    audit,
    campaign,
    envelope,
    gate,
    httpbench,
    ledger,
    lookups,
    outbox,
    pgcluster,
    prefilter,
    proofs,
    receipts,
    tcf,
    webhook,
)
from bench.backends import Backend, PostgresBackend, SqliteBackend
from bench.common import REPO, Figure, load_average, machine_info
from bench.config import Sizes
from consentgate.bootstrap import App, build
from consentgate.config import load_settings

PHASES = (
    "ingest",
    "lookup",
    "http",
    "proof",
    "webhook",
    "receipts",
    "tcf",
    "gate",
    "envelope",
    "prefilter",
    "campaign",
    "outbox",
    "audit",
)
BACKEND_FREE = ("tcf", "envelope")  # phases that touch no database: run once, not per backend
BACKEND_ORDER = ("in-process", "sqlite", "postgresql")
FIGURE_KEYS = {
    "ingest": [
        ("ingest", "appends/s, core.ingest.ingest(batch=True)"),
        ("ledger_append", "appends/s, LedgerStore.append alone"),
    ],
    "lookup": [("lookup", "lookups/s, core.queries.by_hashed_id")],
    "http": [("http_lookup", "HTTP lookups/s")],
    "proof": [("proof_p50", "inclusion proof p50"), ("proof_p99", "inclusion proof p99")],
    "webhook": [
        ("webhook_single", "webhook events/s over HTTP, 1 event/delivery"),
        ("webhook_batch", "webhook events/s over HTTP, 50 events/delivery"),
    ],
    "receipts": [
        ("receipt_issue", "receipts issued/s, core.receipts.receipt"),
        ("receipt_verify", "receipts verified offline/s, check_bundle"),
    ],
    "tcf": [
        ("tcf_decode", "TC strings decoded/s"),
        ("gpp_decode", "GPP strings decoded/s"),
    ],
    "gate": [
        ("gate_warm", "on-send checks/s, core.gate.check, warm cache"),
        ("gate_cold", "on-send checks/s, core.gate.check, cold cache"),
    ],
    "envelope": [
        ("envelope_x25519_keystore", "envelope seal µs/call, X25519, key-store signer"),
        ("envelope_x25519_preloaded", "envelope seal µs/call, X25519, preloaded key"),
        ("envelope_hybrid_keystore", "envelope seal µs/call, ML-KEM-768+X25519, key store"),
        ("envelope_hybrid_preloaded", "envelope seal µs/call, ML-KEM-768+X25519, preloaded"),
    ],
    "prefilter": [
        ("prefilter_total", "1M-number pre-filter, s (normalise + hash + prefilter)"),
        ("prefilter_hashed", "1M E.164 ids pre-filter, s (hash + prefilter)"),
    ],
    "campaign": [("campaign", "campaign msgs/s end to end")],
    "outbox": [("outbox_relay", "outbox relay deliveries/s to a local receiver")],
    "audit": [
        ("audit_as_of", "as_of audit over 1M ledger events, s"),
        ("audit_export", "export of a subject with 1,000 events, s"),
    ],
}
KEY_ORDER = {key: i for i, key in enumerate(k for keys in FIGURE_KEYS.values() for k, _ in keys)}


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="scale 0.1: a smoke run")
    parser.add_argument("--scale", type=float, help="size multiplier (default BENCH_SCALE or 1)")
    parser.add_argument(
        "--backends", default="sqlite,postgresql", help="comma-separated: sqlite,postgresql"
    )
    parser.add_argument("--no-pg", action="store_true", help="SQLite only")
    parser.add_argument("--only", help=f"comma-separated phases of {','.join(PHASES)}")
    parser.add_argument("--proof-leaves", type=int, help="leaves in the SQLite proof tree")
    parser.add_argument("--pg-proof-leaves", type=int, help="leaves in the PostgreSQL proof tree")
    parser.add_argument("--http-seconds", type=float, help="measured seconds per HTTP phase")
    parser.add_argument("--http-workers", type=int, help="client processes for HTTP")
    parser.add_argument(
        "--tree-build",
        choices=("bulk", "append"),
        help="proof tree: bulk loader (default) or LedgerStore.append for every batch",
    )
    parser.add_argument(
        "--campaign-recipients", type=int, help="recipients of the timed campaign (2,000)"
    )
    parser.add_argument(
        "--prefilter-audience", type=int, help="numbers in the pre-filter audience (1,000,000)"
    )
    parser.add_argument(
        "--prefilter-normalise",
        type=int,
        help="numbers normalised (timed) in the pre-filter phase; the rest is extrapolated",
    )
    parser.add_argument(
        "--prefilter-relaxed-rerun",
        action="store_true",
        help="when core.gate.prefilter fails closed, time it again with a 120 s statement timeout",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="cProfile extra ingest batches; py-spy a campaign (if py-spy is installed)",
    )
    parser.add_argument(
        "--output", type=Path, default=REPO / "bench" / "results.json", help="results file"
    )
    return parser.parse_args(argv)


def _sizes(args: argparse.Namespace) -> tuple[Sizes, float]:
    scale = 0.1 if args.quick else float(os.environ.get("BENCH_SCALE") or 1.0)
    if args.scale is not None:
        scale = args.scale
    sizes = Sizes.scaled(scale)
    overrides: dict[str, Any] = {}
    if args.proof_leaves:
        overrides["proof_leaves"] = args.proof_leaves
    if args.pg_proof_leaves:
        overrides["proof_leaves_pg"] = args.pg_proof_leaves
    if args.http_seconds:
        overrides["http_seconds"] = args.http_seconds
    if args.tree_build:
        overrides["tree_build"] = args.tree_build
    if args.http_workers:
        overrides["http_workers"] = args.http_workers
    if args.campaign_recipients:
        overrides["campaign_recipients"] = args.campaign_recipients
    if args.prefilter_audience:
        overrides["prefilter_audience"] = args.prefilter_audience
    if args.prefilter_normalise:
        overrides["prefilter_normalise"] = args.prefilter_normalise
    if args.prefilter_relaxed_rerun:
        overrides["prefilter_relaxed_rerun"] = True
    return replace(sizes, **overrides), scale


def _skipped(backend: str, phases: list[str], reason: str) -> list[Figure]:
    return [
        Figure(backend, key, title, "", skipped=reason)
        for phase in phases
        for key, title in FIGURE_KEYS[phase]
    ]


class Runner:
    def __init__(self, sizes: Sizes, phases: list[str], profile_dir: Path | None) -> None:
        self.sizes = sizes
        self.phases = phases
        self.profile_dir = profile_dir
        self.figures: list[Figure] = []
        self.timings: dict[str, float] = {}
        self.load: dict[str, list[float] | None] = {}
        self.console = Console(stderr=True)

    def _phase(self, backend: Backend | str, phase: str, fn: Callable[[], list[Figure]]) -> bool:
        name = backend if isinstance(backend, str) else backend.name
        self.console.log(f"[bold]{name}[/]: {phase} …")
        t0 = time.perf_counter()
        try:
            self.figures.extend(fn())
            ok = True
        except Exception as exc:  # a failed phase is reported, never hidden
            traceback.print_exc()
            self.figures.extend(_skipped(name, [phase], f"error: {exc!r}"[:400]))
            ok = False
        self.timings[f"{name}.{phase}"] = round(time.perf_counter() - t0, 2)
        self.load[f"{name}.{phase}"] = load_average()
        self.console.log(f"[bold]{name}[/]: {phase} done in {time.perf_counter() - t0:.1f} s")
        return ok

    def backend_free(self) -> None:
        """Phases that touch no database, once per run, before any database is started."""
        if "tcf" in self.phases:
            self._phase(tcf.BACKEND, "tcf", lambda: tcf.run(self.sizes))
        if "envelope" in self.phases:
            self._phase(envelope.BACKEND, "envelope", lambda: envelope.run(self.sizes))

    def run_backend(self, backend: Backend, proof_leaves: int) -> None:
        core: App = build(load_settings(backend.env))
        try:
            state: ledger.IngestState | None = None

            def ingest() -> list[Figure]:
                nonlocal state
                figs, state = ledger.run(backend, core, self.sizes, self.profile_dir)
                return figs

            needs_state = [p for p in ("lookup", "http") if p in self.phases]
            wants_data = "ingest" in self.phases or needs_state
            if wants_data and (not self._phase(backend, "ingest", ingest) or state is None):
                self.figures.extend(_skipped(backend.name, needs_state, "skipped: no data"))
                needs_state = []
            if state is not None:
                st = state
                if "lookup" in needs_state:
                    self._phase(
                        backend,
                        "lookup",
                        lambda: [
                            lookups.run(backend, core, ledger.TENANT, st.hashed_ids, self.sizes)
                        ],
                    )
                if "http" in needs_state:
                    self._phase(
                        backend,
                        "http",
                        lambda: [httpbench.run(backend, core, st.phones, self.sizes)],
                    )
            if "proof" in self.phases:
                self._phase(
                    backend, "proof", lambda: proofs.run(backend, core, proof_leaves, self.sizes)
                )
            if "webhook" in self.phases:
                self._phase(backend, "webhook", lambda: webhook.run(backend, core, self.sizes))
            if "receipts" in self.phases:
                self._phase(backend, "receipts", lambda: receipts.run(backend, core, self.sizes))
            if "gate" in self.phases:
                self._phase(backend, "gate", lambda: gate.run(backend, core, self.sizes))
            if "prefilter" in self.phases:
                self._phase(backend, "prefilter", lambda: prefilter.run(backend, core, self.sizes))
            if "campaign" in self.phases:
                self._phase(
                    backend,
                    "campaign",
                    lambda: campaign.run(backend, core, self.sizes, self.profile_dir),
                )
            if "outbox" in self.phases:
                self._phase(backend, "outbox", lambda: outbox.run(backend, core, self.sizes))
            if "audit" in self.phases:
                self._phase(backend, "audit", lambda: audit.run(backend, core, self.sizes))
        finally:
            core.close()

    def sqlite(self) -> dict[str, Any]:
        workdir = Path(tempfile.mkdtemp(prefix="consentgate-bench-sqlite-"))
        try:
            backend = SqliteBackend(workdir)
            self.run_backend(backend, self.sizes.proof_leaves)
            return {"durability": backend.durability, "database": "file in a temp dir"}
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def postgresql(self) -> dict[str, Any]:
        try:
            cluster = pgcluster.start()
        except (FileNotFoundError, OSError, subprocess.SubprocessError) as exc:
            reason = f"skipped: {exc}"
            per_backend = [p for p in self.phases if p not in BACKEND_FREE]
            self.figures.extend(_skipped("postgresql", per_backend, reason))
            return {"status": reason}
        workdir = Path(tempfile.mkdtemp(prefix="consentgate-bench-pgdata-"))
        try:
            cluster.execute("CREATE DATABASE bench")
            backend = PostgresBackend(
                workdir,
                cluster.dsn("bench"),
                cluster.url("bench"),
                pgcluster.DURABILITY,
                server_log=cluster.base / "server.log",
            )
            info = {
                "durability": backend.durability,
                "server_version": cluster.server_version(),
                "database": "throwaway cluster (initdb/pg_ctl), 127.0.0.1",
            }
            self.run_backend(backend, self.sizes.proof_leaves_pg)
            return info
        finally:
            pgcluster.destroy(cluster)
            shutil.rmtree(workdir, ignore_errors=True)


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "µs":
        return f"{value:,.0f} µs"
    return f"{value:,.0f}/s"


def _notes(fig: Figure) -> str:
    d = fig.details
    if fig.key in ("ingest", "ledger_append"):
        return (
            f"batch p50 {d['batch_ms']['p50_ms']:.0f} ms, p99 {d['batch_ms']['p99_ms']:.0f} ms; "
            f"{d['timed_rows']:,} rows"
        )
    if fig.key == "lookup":
        lat, raw = d["latency"], d["baseline_latency"]
        return (
            f"p50 {lat['p50_ms'] * 1000:.0f} µs, p99 {lat['p99_ms'] * 1000:.0f} µs "
            f"(raw p50 {raw['p50_ms'] * 1000:.0f} µs); {d['subjects']:,} subjects"
        )
    if fig.key == "http_lookup":
        lk, hz = d["lookup"], d["healthz"]
        return (
            f"p50 {lk['p50_ms']:.1f} ms, p99 {lk['p99_ms']:.1f} ms, errors {lk['errors']}; "
            f"healthz p50 {hz['p50_ms']:.1f}, p99 {hz['p99_ms']:.1f} ms, errors {hz['errors']}; "
            f"server CPU {lk['server_cpu_cores_busy']:.2f} cores"
        )
    if fig.key == "proof_p50":
        capped = f", {d['time_capped']}" if d["time_capped"] else ""
        return (
            f"{d['proofs_timed']} proofs{capped}, all verified vs signed root; "
            f"service's SQL replayed on bare driver p50 "
            f"{d['service_sql_replayed_bare_driver_latency']['p50_ms']:.2f} ms; "
            f"tree built in {d['tree_build']['seconds']:.0f} s"
        )
    if fig.key.startswith("webhook_"):
        h, b = d["http"], d["baseline"]
        lat, side = h["delivery_latency"], h["server_side_sample"]
        per_txn = side["events_per_transaction"]
        return (
            f"delivery p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms, "
            f"errors {h['errors']}; {h['deliveries_per_s']:,.0f} deliveries/s; "
            f"server {per_txn or 0:.1f} events/txn, CPU {h['server_cpu_cores_busy']:.2f} "
            f"cores (machine {h['machine_cpu_cores_busy'] or 0:.2f}), clients "
            f"{h['clients_cpu_cores_busy']:.2f}; baseline {b['events']:,} events, "
            f"txn p50 {b['transaction_ms']['p50_ms']:.1f} ms"
        )
    if fig.key in ("receipt_issue", "receipt_verify"):
        lat, raw = d["latency"], d["baseline_latency"]
        extra = (
            f"; sign_compact {d['sign_compact_same_claims']['rate']:,.0f}/s; "
            f"tree {d['ledger_tree_size']:,} leaves, {d['ledger_entries_in_database']:,} "
            "ledger rows in the database"
            if fig.key == "receipt_issue"
            else f"; {d['proof_hashes_p50']} proof hashes (p50)"
        )
        return (
            f"p50 {lat['p50_ms']:.2f} ms, p99 {lat['p99_ms']:.2f} ms "
            f"(bare p50 {raw['p50_ms'] * 1000:.0f} µs); {_count_of(d)} receipts{extra}"
        )
    if fig.key in ("tcf_decode", "gpp_decode"):
        per = d["per_string_mean_us"]
        slowest = max(per, key=per.__getitem__)
        return (
            f"{d['fixture_strings']} fixture strings, {d['strings_decoded']:,} decodes; "
            f"slowest {slowest} {per[slowest]:.0f} µs; this process got "
            f"{d['cpu_share_while_timed']:.0%} of a CPU while timed"
        )
    if fig.key in ("gate_warm", "gate_cold"):
        lat, raw = d["latency"], d["baseline_latency"]
        return (
            f"p50 {lat['p50_ms'] * 1000:.1f} µs, p99 {lat['p99_ms'] * 1000:.1f} µs "
            f"(raw SELECT p50 {raw['p50_ms'] * 1000:.0f} µs); {d['checks']:,} checks over "
            f"{d['subjects']:,} subjects"
        )
    if fig.key.startswith("envelope_"):
        lat, both = d["latency"], d["raw_encrypt_plus_sign"]
        return (
            f"p50 {lat['p50_ms'] * 1000:.0f} µs, p99 {lat['p99_ms'] * 1000:.0f} µs; vs bare "
            f"encrypt + Ed25519 sign ({both['mean_us']:.0f} µs): {both['seal_over_it']:.2f}×; "
            f"{d['seals']:,} seals; floor = {d['floor_is'].split(' ')[0]} × bare encrypt"
        )
    if fig.key == "prefilter_total":
        parts, pf, base = d["parts"], d["prefilter"], d["baseline"]
        extra = (
            f" (EXTRAPOLATED from {d['normalise']['numbers_timed']:,})"
            if parts["normalise_extrapolated"]
            else ""
        )
        failed = ""
        if d["service_gate_failed_closed"]:
            failed = (
                "; core.gate FAILED CLOSED (statement timeout): timed again with a 120 s timeout"
                if pf["gate"].startswith("ConsentGate")
                else "; core.gate FAILED CLOSED (statement timeout: "
                f"{(pf['failed_statements'] or [{'statement': '?'}])[0]['statement']} "
                "cancelled): prefilter = time until that answer"
            )
        return (
            f"normalise {parts['normalise_s']:.1f} s{extra} "
            f"({d['normalise']['per_number_us']:.0f} µs/number), hash "
            f"{parts['hash_identifier_s']:.1f} s, prefilter {parts['prefilter_s']:.1f} s "
            f"(SQL {pf['sql_s']:.1f} s); baseline hmac {base['hmac_s']:.1f} s + join "
            f"{base['join']['seconds']:.1f} s{failed}"
        )
    if fig.key == "prefilter_hashed":
        failed = "; core.gate FAILED CLOSED" if d.get("service_gate_failed_closed") else ""
        return (
            f"hash {d['hash_identifier_s']:.1f} s + prefilter {d['prefilter_s']:.1f} s, "
            f"{d['audience']:,} ids, measured at full size{failed}"
        )
    if fig.key == "campaign":
        t, b = d["timed"], d["baseline"]
        first = d.get("first_attempt_failed_closed")
        retried = (
            f"first attempt: send call {first['send_call_s']:.2f} s, "
            f"{first['skipped_store_unavailable']:,} recipients skipped store_unavailable; "
            if first
            else ""
        )
        return (
            f"{retried}{t['sent']:,} sent in {t['seconds_send_to_done']:.1f} s, sandbox holds "
            f"{t['sandbox_messages']:,}; CPU cores "
            f"{', '.join(f'{k} {v:.2f}' for k, v in t['cpu_cores_busy'].items())}; "
            f"baseline p50 {b['latency']['p50_ms']:.0f} ms, server CPU "
            f"{b['server_cpu_cores_busy']:.2f} cores"
        )
    if fig.key == "audit_as_of":
        return (
            f"{d['events']:,} events, {sum(d['answer'].values()):,} subjects {d['answer']}; "
            f"granted only {d['status_granted_s']:.2f} s, known_at "
            f"{d['known_at_equal_as_of_s']:.2f} s, JSON pages of 10,000 "
            f"{d['json_pages_of_10000_s']:.2f} s; ledger built in "
            f"{d['ledger']['seconds']:.0f} s"
        )
    if fig.key == "audit_export":
        return (
            f"{d['events']:,} leaves, {d['sends']} sends, {d['bundle_bytes'] / 1e6:.1f} MB; "
            f"verify offline {min(d['verify_bundle_offline_s']):.2f} s; tree {d['tree_size']:,}"
        )
    if fig.key == "outbox_relay":
        return (
            f"{d['deliveries']:,} deliveries, {d['events_per_subject']} per subject, claims of "
            f"≤ {d['claim_batch']}, {d['concurrency']} in flight; relay CPU "
            f"{d['relay_process_cpu_cores_busy']:.2f} cores, receiver "
            f"{d['receiver_cpu_cores_busy']:.2f}; baseline client CPU "
            f"{d['baseline_client_cpu_cores_busy']:.2f}"
        )
    return ""


def _count_of(details: dict[str, Any]) -> str:
    n = details.get("receipts", details.get("bundles"))
    return f"{n:,}" if isinstance(n, int) else "?"


def render(figures: list[Figure], console: Console) -> None:
    table = Table(
        title="consentgate benchmark",
        caption="÷ base: value / baseline (rates: share of the raw rate; times: × raw time)",
    )
    for name in ("backend", "figure", "value", "baseline", "÷ base", "floor", "notes"):
        table.add_column(name, overflow="fold")
    for fig in figures:
        if fig.skipped:
            table.add_row(fig.backend, fig.title, fig.skipped, "", "", "", "")
            continue
        floor = ""
        if fig.floor is not None:
            sign = "≥" if fig.floor_kind == "min" else "≤"
            mark = "[green]met[/]" if fig.met else "[red]MISSED[/]"
            floor = f"{sign} {_fmt(fig.floor, fig.unit)} {mark}"
        ratio = fig.ratio
        table.add_row(
            fig.backend,
            fig.title,
            _fmt(fig.value, fig.unit),
            f"{_fmt(fig.baseline, fig.unit)}\n[dim]{fig.baseline_title}[/]",
            "" if ratio is None else f"{ratio:.2f}×",
            floor,
            _notes(fig),
        )
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    sizes, scale = _sizes(args)
    phases = args.only.split(",") if args.only else list(PHASES)
    unknown = set(phases) - set(PHASES)
    if unknown:
        raise SystemExit(f"unknown phases: {', '.join(sorted(unknown))}")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if args.no_pg:
        backends = [b for b in backends if b != "postgresql"]
    if all(p in BACKEND_FREE for p in phases):
        backends = []  # nothing to measure on a database: start none
    profile_dir = args.output.parent / "profiles" if args.profile else None
    if args.only:
        _previous(args.output)  # fail now, not after the run, if it cannot be merged into

    machine = machine_info()
    started = time.perf_counter()
    runner = Runner(sizes, phases, profile_dir)
    runner.backend_free()
    backend_info: dict[str, Any] = {}
    for name in backends:
        if name == "sqlite":
            backend_info[name] = runner.sqlite()
        elif name == "postgresql":
            backend_info[name] = runner.postgresql()
        else:
            raise SystemExit(f"unknown backend {name!r}")
    runtime = time.perf_counter() - started

    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    render(runner.figures, console)
    run_record = {
        "scale": scale,
        "sizes": asdict(sizes),
        "phases": phases,
        "backends_run": backends,
        "runtime_s": round(runtime, 1),
        "phase_s": runner.timings,
        "load_average_after_phase": runner.load,
        "note": "2-core machine shared with other work: see the load averages",
        "loopback_only": True,
    }
    machine = {**machine, "load_average_at_end": load_average()}
    figures = [{**f.as_dict(), "run": _provenance(machine)} for f in runner.figures]
    results = {
        "machine": machine,
        "run": run_record,
        "backends": backend_info,
        "figures": figures,
    }
    previous = _previous(args.output) if args.only else None  # re-read: it may have changed
    if previous is not None:
        results = merge(previous, results)
        kept = sum(1 for f in results["figures"] if f["run"] != _provenance(machine))
        console.print(f"--only: merged into {args.output}; kept {kept} figures of earlier runs")
    else:
        try:
            earlier_file = _previous(args.output)
        except SystemExit:  # an unreadable earlier file: a full run replaces it whole
            earlier_file = None
        if earlier_file is not None:  # sections of other tools (make load, make reliability)
            results.update({k: v for k, v in earlier_file.items() if k in OTHER_SECTIONS})
    console.print(f"total runtime {runtime:.0f} s; results in {args.output}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


def _previous(path: Path) -> dict[str, Any] | None:
    """The results file a partial run merges into (None when there is none yet)."""
    if not path.exists():
        return None
    try:
        previous = json.loads(path.read_text())
        if not isinstance(previous, dict) or not isinstance(previous.get("figures"), list):
            raise ValueError("no figures list")
    except (OSError, ValueError) as exc:
        raise SystemExit(
            f"--only merges into {path}, which cannot be read ({exc}): move it away or run "
            "every phase"
        ) from None
    return previous


def _provenance(machine: dict[str, Any]) -> dict[str, Any]:
    """Which run produced a figure: the git head and the date it started, and whether src/
    had uncommitted changes then (others edit it while runs go on)."""
    return {
        "git_head": machine.get("git_head"),
        "date": machine.get("date"),
        "src_uncommitted": machine.get("src_uncommitted"),
    }


def _sort_key(figure: dict[str, Any]) -> tuple[int, int, str]:
    backend = figure["backend"]
    rank = BACKEND_ORDER.index(backend) if backend in BACKEND_ORDER else len(BACKEND_ORDER)
    return rank, KEY_ORDER.get(figure["key"], len(KEY_ORDER)), figure["key"]


#: Top-level sections of bench/results.json written by other tools, kept by every run here.
OTHER_SECTIONS = ("load", "reliability")


def merge(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A partial run's results merged into an earlier results file.

    A (backend, figure) the new run produced replaces the earlier one, except that a figure
    the new run could not measure (skipped or failed) does not erase a measured one: the
    measured one stays, with the failed attempt attached (``superseded_attempt``). Every
    other figure is kept as it was, carrying the run that produced it (``run``; figures of
    files written before that field existed get their file's git head and date). The run
    records of the runs that still own figures are kept under ``earlier_runs``.
    """
    old_machine = old.get("machine", {})
    old_prov = _provenance(old_machine)
    fresh = {(f["backend"], f["key"]): f for f in new["figures"]}
    merged: list[dict[str, Any]] = []
    for f in old.get("figures", []):
        f = {**f, "run": f.get("run") or old_prov}
        replacement = fresh.get((f["backend"], f["key"]))
        if replacement is None:
            merged.append(f)
        elif replacement["status"] != "ok" and f["status"] == "ok":
            merged.append(
                {
                    **f,
                    "superseded_attempt": {
                        "status": replacement["status"],
                        "run": replacement["run"],
                    },
                }
            )
            del fresh[(f["backend"], f["key"])]
    merged.extend(fresh.values())
    merged.sort(key=_sort_key)

    earlier = list(old.get("earlier_runs", []))
    earlier.append(
        {
            **old_prov,
            "machine": old_machine,
            "run": old.get("run", {}),
            "backends": old.get("backends", {}),
        }
    )
    owners = {(f["run"]["git_head"], f["run"]["date"]) for f in merged}
    earlier = [r for r in earlier if (r["git_head"], r["date"]) in owners]
    new_prov = _provenance(new["machine"])
    return {
        "machine": new["machine"],
        "run": {
            **new["run"],
            "merged_into": "an earlier results file: figures this run did not produce are kept "
            "from the run named in their 'run' field (see earlier_runs)",
        },
        "backends": {**old.get("backends", {}), **new["backends"]},
        "earlier_runs": [
            r
            for r in earlier
            if (r["git_head"], r["date"])
            != (
                new_prov["git_head"],
                new_prov["date"],
            )
        ],
        "figures": merged,
        # Sections other tools own (`make load`: "load"; `make reliability`: "reliability"):
        # a `make bench` run keeps them as they are.
        **{k: v for k, v in old.items() if k in OTHER_SECTIONS},
    }


if __name__ == "__main__":
    raise SystemExit(main())
