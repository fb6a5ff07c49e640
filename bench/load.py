"""``make load``: the HTTP API driven at fixed rates from separate processes.

For each store (SQLite file, throwaway PostgreSQL with durable settings) it starts the real
``consentgate serve --workers N`` (one HTTP process per core, background workers on, access
log on: what an operator runs), seeds subjects through the real ingest path, and offers each
scenario a ladder of fixed rates:

- ``lookup``: ``GET /v1/subjects/{hashed_id}/consents`` over the seeded subjects;
- ``ingest``: ``POST /v1/consent-events``, one event per request, every consent_id new;
- ``webhook``: ``POST /v1/tenants/{t}/cmp/generic/events``, one event per delivery, signed
  per Standard Webhooks, every webhook-id new.

Generators are open-loop (:mod:`bench.load_client`): latency counts from each request's due
time, so a server that falls behind shows it in p99. A rate is *sustained* when at least
99 % of the offered requests were answered 2xx within the window and none failed. After the
write scenarios every acknowledged event is looked up in the ledger: an acknowledged event
that is missing fails the run. Results go to ``bench/results.json`` under ``load``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import pgcluster
from bench.backends import Backend, PostgresBackend, SqliteBackend
from bench.common import create_tenant, free_port, latency_summary, load_average, machine_info
from bench.httpbench import _start_server, _stop
from bench.webhook import _process_tree, _tree_cpu_seconds, secret_bytes
from bench.webhook_client import headers as signed_headers
from consentgate.bootstrap import build
from consentgate.config import load_settings

REPO = Path(__file__).resolve().parent.parent
TENANT = "load"
FLOOR_LOOKUP = {"rate": 3000, "p99_ms": 10.0}  # issue 6, SQLite
PHONE_PREFIX = "+4479112"  # + 5 digits: valid GB mobile numbers, disjoint from the seed set


@dataclass(frozen=True)
class Plan:
    rates: dict[str, list[int]]
    duration: float
    warmup: float
    processes: int
    connections: int
    subjects: int


FULL = Plan(
    rates={
        "lookup": [500, 1000, 2000, 3000, 4000],
        "ingest": [250, 500, 1000, 1500, 2000],
        "webhook": [250, 500, 1000, 1500, 2000],
    },
    duration=10.0,
    warmup=2.0,
    processes=2,
    connections=32,
    subjects=10_000,
)
QUICK = Plan(
    rates={"lookup": [1000, 3000], "ingest": [500, 1000], "webhook": [500, 1000]},
    duration=4.0,
    warmup=1.0,
    processes=2,
    connections=32,
    subjects=2_000,
)


def _event(tag: str, i: int) -> dict[str, Any]:
    return {
        "consent_id": f"load-{tag}-{i:08d}",
        "phone": f"{PHONE_PREFIX}{(i * 2654435761) % 100_000:05d}",
        "consent_type": "marketing_rcs",
        "status": "granted" if i % 5 else "withdrawn",
        "timestamp": "2026-11-01T10:00:00Z",
        "cmp_version": "load",
    }


def _requests(
    scenario: str, proc: int, count: int, rate: int, ctx: dict[str, Any]
) -> list[list[Any]]:
    """The prepared requests of one generator process: ``[method, path, headers, body]``."""
    auth = {"Authorization": f"Bearer {ctx['api_key']}"}
    if scenario == "healthz":  # the framework's floor: no auth, no store
        return [["GET", "/healthz", {}, None]]
    if scenario == "lookup":
        ids: list[str] = ctx["hashed_ids"]
        step = len(ids) // 7 + 1
        return [
            ["GET", f"/v1/subjects/{ids[(proc * 997 + i * step) % len(ids)]}/consents", auth, None]
            for i in range(min(count, len(ids)))
        ]
    out: list[list[Any]] = []
    for i in range(count):
        tag = f"{scenario}{rate}p{proc}"
        body = json.dumps(_event(tag, i), separators=(",", ":"))
        if scenario == "ingest":
            out.append(
                ["POST", "/v1/consent-events", {**auth, "Content-Type": "application/json"}, body]
            )
        else:
            hdrs = signed_headers(ctx["secret"], f"msg_{tag}_{i}", body.encode())
            out.append(["POST", f"/v1/tenants/{TENANT}/cmp/generic/events", hdrs, body])
    return out


def _drive(
    scenario: str, rate: int, plan: Plan, port: int, server_pid: int, ctx: dict[str, Any]
) -> dict[str, Any]:
    per_proc = rate / plan.processes
    count = int((plan.warmup + plan.duration) * per_proc) + 1
    workdir: Path = ctx["workdir"]
    procs = []
    for p in range(plan.processes):
        req_file = workdir / f"req-{scenario}-{rate}-{p}.jsonl"
        with req_file.open("w", encoding="utf-8") as fh:
            for r in _requests(scenario, p, count, rate, ctx):
                fh.write(json.dumps(r) + "\n")
        cfg = {
            "port": port,
            "rate": per_proc,
            "duration": plan.duration,
            "warmup": plan.warmup,
            "connections": plan.connections // plan.processes,
            "requests": str(req_file),
            "result": str(req_file.with_suffix(".result.json")),
        }
        child = subprocess.Popen(
            [sys.executable, "-m", "bench.load_client"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        assert child.stdin is not None
        assert child.stdout is not None
        child.stdin.write(json.dumps(cfg) + "\n")
        child.stdin.flush()
        procs.append(child)
    for child in procs:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError("a load generator did not start")
    start = time.time() + 0.5
    for child in procs:
        assert child.stdin is not None
        child.stdin.write(f"go {start}\n")
        child.stdin.flush()
    time.sleep(max(0.0, start - time.time()) + plan.warmup)
    pids = _process_tree(server_pid)
    cpu0, t0 = _tree_cpu_seconds(pids), time.monotonic()
    results = []
    for child in procs:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "done":
            raise RuntimeError("a load generator failed")
        child.wait(timeout=60)
    for p in range(plan.processes):
        results.append(json.loads((workdir / f"req-{scenario}-{rate}-{p}.result.json").read_text()))
    server_cpu = (_tree_cpu_seconds(pids) - cpu0) / (time.monotonic() - t0)
    latencies = [x for r in results for x in r["latencies"]]
    errors: dict[str, int] = {}
    for r in results:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    window = max(r["window_s"] for r in results)
    offered = rate * plan.duration
    row = {
        "offered_per_s": rate,
        "throughput_per_s": round(len(latencies) / window, 1),
        "ok": len(latencies),
        "errors": sum(errors.values()),
        "errors_by_status": errors,
        "late_starts": sum(r["late_starts"] for r in results),
        "not_sent": sum(r["not_sent"] for r in results),
        "acknowledged_incl_warmup": sum(r["acknowledged"] for r in results),
        **{k: round(v, 3) for k, v in latency_summary(latencies).items()},
        "server_cpu_cores": round(server_cpu, 2),
        "generators_cpu_cores": round(sum(r["cpu_s"] for r in results) / window, 2),
        "load_average": load_average(),
    }
    # Sustained: (almost) every offered request answered 2xx, and answered in the window
    # rather than drained long after it.
    row["sustained"] = (
        row["errors"] == 0
        and len(latencies) >= 0.99 * offered
        and row["throughput_per_s"] >= 0.97 * rate
    )
    return row


def _seed(backend: Backend, subjects: int) -> tuple[str, str, list[str]]:
    info = create_tenant({**os.environ, **backend.env}, TENANT)
    if isinstance(info, str):
        raise RuntimeError(info)
    core = build(load_settings(backend.env))
    try:
        from consentgate.consent.ingest import EventInput

        hashed: list[str] = []
        for start in range(0, subjects, 500):
            evs = [
                EventInput(
                    consent_id=f"seed-{i:07d}",
                    phone=f"+4479111{i:05d}",
                    consent_type="marketing_rcs",
                    status="granted",
                    timestamp="2026-10-01T10:00:00Z",
                    cmp_version="seed",
                )
                for i in range(start, min(start + 500, subjects))
            ]
            hashed.extend(r.hashed_id for r in core.ingest.ingest(TENANT, "GB", evs, batch=True))
    finally:
        core.close()
    return str(info["api_key"]), str(info["webhook_secret"]), hashed


def _acknowledged_in_ledger(backend: Backend, prefix: str) -> int:
    conn = backend.connect()
    try:
        row = conn.execute(
            f"SELECT count(*) FROM ledger_entries WHERE tenant_id = {backend.param} "
            f"AND consent_id LIKE {backend.param}",
            (TENANT, prefix + "%"),
        ).fetchone()
    finally:
        conn.close()
    return int(row[0])


def run_backend(backend: Backend, plan: Plan, scenarios: list[str]) -> dict[str, Any]:
    api_key, webhook_secret, hashed = _seed(backend, plan.subjects)
    ctx = {
        "api_key": api_key,
        "secret": secret_bytes(webhook_secret),
        "hashed_ids": hashed,
        "workdir": backend.workdir,
    }
    env = {**os.environ, **backend.env}
    cores = os.cpu_count() or 1
    port = free_port()
    server = _start_server(env, port, backend.workdir / "server-load.log", "--workers", str(cores))
    out: dict[str, Any] = {
        "server": f"consentgate serve --workers {cores} (background workers on, access log on)",
        "subjects": len(hashed),
    }
    try:
        for scenario in scenarios:
            rows: list[dict[str, Any]] = []
            for rate in plan.rates[scenario]:
                if len(rows) >= 2 and not rows[-1]["sustained"] and not rows[-2]["sustained"]:
                    break  # two rates past saturation say enough
                row = _drive(scenario, rate, plan, port, server.pid, ctx)
                if scenario in ("ingest", "webhook"):
                    acked = row["acknowledged_incl_warmup"]
                    found = _acknowledged_in_ledger(backend, f"load-{scenario}{rate}p")
                    row["ledger_events_found"] = found
                    if found < acked:
                        raise RuntimeError(
                            f"{scenario} at {rate}/s: {acked} acknowledged, {found} in ledger"
                        )
                rows.append(row)
                print(f"  {backend.name} {scenario} {rate}/s: {_line(row)}", flush=True)
            out[scenario] = rows
    finally:
        _stop(server)
    return out


def _line(row: dict[str, Any]) -> str:
    return (
        f"{row['throughput_per_s']}/s p50 {row.get('p50_ms')} ms p99 {row.get('p99_ms')} ms "
        f"errors {row['errors']} server {row['server_cpu_cores']} cores "
        f"{'sustained' if row['sustained'] else 'NOT sustained'}"
    )


def _best(rows: list[dict[str, Any]], p99_ms: float | None = None) -> dict[str, Any] | None:
    ok = [r for r in rows if r["sustained"] and (p99_ms is None or r["p99_ms"] <= p99_ms)]
    return max(ok, key=lambda r: r["offered_per_s"]) if ok else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two rates each, 4 s windows")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--scenarios", default="lookup,ingest,webhook")
    parser.add_argument("--rates", help="override: comma-separated rates for every scenario")
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results.json")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    scenarios = [s for s in args.scenarios.split(",") if s]
    if args.rates:
        fixed = [int(r) for r in args.rates.split(",")]
        plan = Plan({s: fixed for s in scenarios}, *list(plan.__dict__.values())[1:])
    started = time.time()
    section: dict[str, Any] = {
        "machine": machine_info(),
        "plan": {**plan.__dict__, "scenarios": scenarios},
        "method": __doc__,
        "backends": {},
    }
    for name in args.backends.split(","):
        workdir = Path(tempfile.mkdtemp(prefix=f"consentgate-load-{name}-"))
        cluster = None
        try:
            if name == "sqlite":
                backend: Backend = SqliteBackend(workdir)
            else:
                try:
                    cluster = pgcluster.start()
                except (FileNotFoundError, OSError, subprocess.SubprocessError) as exc:
                    section["backends"][name] = {"skipped": f"no PostgreSQL: {exc}"}
                    continue
                cluster.execute("CREATE DATABASE load")
                backend = PostgresBackend(
                    workdir, cluster.dsn("load"), cluster.url("load"), pgcluster.DURABILITY
                )
            print(f"{name}: seeding {plan.subjects} subjects", flush=True)
            section["backends"][name] = run_backend(backend, plan, scenarios)
        finally:
            if cluster is not None:
                pgcluster.destroy(cluster)
            shutil.rmtree(workdir, ignore_errors=True)
    summary: dict[str, Any] = {}
    for name, res in section["backends"].items():
        for scenario in scenarios:
            if scenario in res:
                best = _best(res[scenario])
                summary[f"{name}.{scenario}"] = best and {
                    k: best[k] for k in ("offered_per_s", "throughput_per_s", "p50_ms", "p99_ms")
                }
    if "sqlite" in section["backends"] and "lookup" in section["backends"]["sqlite"]:
        best = _best(section["backends"]["sqlite"]["lookup"], FLOOR_LOOKUP["p99_ms"])
        summary["floor_lookup_sqlite"] = {
            **FLOOR_LOOKUP,
            "met": bool(best and best["offered_per_s"] >= FLOOR_LOOKUP["rate"]),
        }
    section["summary"] = summary
    section["runtime_s"] = round(time.time() - started, 1)
    results = json.loads(args.output.read_text()) if args.output.exists() else {}
    results["load"] = section
    args.output.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
