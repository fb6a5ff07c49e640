"""Figure 5: signed CMP webhook ingest over HTTP against the real server (``consentgate
serve --workers N``, one HTTP process per core): POST /v1/tenants/{tenant}/cmp/generic/events
with Standard Webhooks signatures, from separate client processes, (a) one event per delivery
and (b) 50 events per delivery. The same load against one HTTP process (the CLI default) is
recorded beside it, with the server's CPU per delivery and the load average of each run.

Baseline, same run, same events: in one thread of this process, the bare Standard Webhooks
check of each delivery (HMAC-SHA256 over ``id.timestamp.body`` + constant-time compare) and
``core.ingest.ingest(..., batch=True)`` of the delivery's events into a fresh tenant, in
transactions of (a) 8 deliveries (the largest group 8 clients with one delivery in flight
each can give the server's group commit) and (b) one delivery (50 events). No HTTP, no JSON
parsing, no pydantic adapter: bodies, signatures and ``EventInput``s are built untimed.

All traffic is on 127.0.0.1; every client loop is bounded in time and in count.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import webhook_client as client
from bench.backends import Backend
from bench.common import REPO, Figure, create_tenant, free_port, latency_summary
from bench.config import Sizes
from bench.httpbench import _cli, _start_server, _stop
from consentgate.bootstrap import App
from consentgate.consent.ingest import EventInput

TENANT = "cmp"
PATH = f"/v1/tenants/{TENANT}/cmp/generic/events"
FLOOR = 1_500.0  # webhook events/s over HTTP on 2 cores


@dataclass(frozen=True)
class Variant:
    name: str  # "single" or "batch"
    per_delivery: int  # events in one delivery
    baseline_deliveries: int  # deliveries per in-process transaction in the baseline

    @property
    def key(self) -> str:
        return f"webhook_{self.name}"


def secret_bytes(webhook_secret: str) -> bytes:
    return base64.b64decode(webhook_secret.removeprefix("whsec_"))


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat (idle and iowait = not
    busy): the server, PostgreSQL's processes, the clients and anything else running."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    total = sum(fields[:8])
    return total - fields[3] - fields[4], total


def _process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it (serve --workers N: the uvicorn workers)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            tasks = list(Path(f"/proc/{current}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                todo.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:
                continue  # a thread that just ended
    return found


def _tree_cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of ``pids`` (from /proc; a process gone counts 0)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _ledger_counts(backend: Backend, tenant: str) -> tuple[int, int]:
    """(tree size, signed checkpoints) of ``tenant``: one checkpoint per write transaction."""
    p = backend.param
    conn = backend.connect()
    try:
        size = conn.execute(
            f"SELECT tree_size FROM ledger_heads WHERE tenant_id = {p}", (tenant,)
        ).fetchone()[0]
        checkpoints = conn.execute(
            f"SELECT count(*) FROM checkpoints WHERE tenant_id = {p}", (tenant,)
        ).fetchone()[0]
    finally:
        conn.close()
    return int(size), int(checkpoints)


def _drive(
    backend: Backend,
    port: int,
    secret: bytes,
    v: Variant,
    sizes: Sizes,
    server_pid: int,
    tag: str,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run the client processes through warm-up and the timed window; sample the server.
    ``tag`` names the run in webhook-ids and consent ids (each run's are new)."""
    workers = sizes.webhook_workers
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.webhook_client"],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(workers)
    ]
    try:
        for w, proc in enumerate(procs):
            assert proc.stdin is not None
            settings = {
                "port": port,
                "path": PATH,
                "secret": base64.b64encode(secret).decode(),
                "variant": tag,
                "per": v.per_delivery,
                "phones": sizes.webhook_phones,
                "worker": w,
                "warmup": sizes.webhook_warmup_seconds,
                "duration": sizes.webhook_seconds,
                "max_deliveries": sizes.webhook_max_deliveries,
            }
            proc.stdin.write(json.dumps(settings) + "\n")
            proc.stdin.flush()
        for proc in procs:  # every client connected before anyone starts
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"webhook client exited with {proc.wait(timeout=10)}")
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        time.sleep(sizes.webhook_warmup_seconds)
        load0 = os.getloadavg()
        size0, cps0 = _ledger_counts(backend, TENANT)
        tree = _process_tree(server_pid)
        ticks0, cpu0, t0 = _cpu_ticks(), _tree_cpu_seconds(tree), time.monotonic()
        time.sleep(sizes.webhook_seconds)
        server_cpu = (_tree_cpu_seconds(tree) - cpu0) / (time.monotonic() - t0)
        ticks1 = _cpu_ticks()
        load1 = os.getloadavg()
        size1, cps1 = _ledger_counts(backend, TENANT)
        timeout = sizes.webhook_warmup_seconds + sizes.webhook_seconds + 120
        results = []
        for proc in procs:
            out, _ = proc.communicate(timeout=timeout)
            if proc.returncode != 0 or not out.strip():
                raise RuntimeError(f"webhook client exited with {proc.returncode}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    results.sort(key=lambda r: int(r["worker"]))
    latencies = [x for r in results for x in r["latencies"]]
    errors: dict[str, int] = {}
    for r in results:
        for k, n in r["errors"].items():
            errors[k] = errors.get(k, 0) + n
    window = max(r["t_end"] for r in results) - min(r["t_start"] for r in results)
    commits = cps1 - cps0
    cpus = os.cpu_count() or 1
    summary = {
        "throughput_events": len(latencies) * v.per_delivery / window,
        "deliveries_per_s": len(latencies) / window,
        "deliveries_ok": len(latencies),
        "events_ok": len(latencies) * v.per_delivery,
        "errors": sum(errors.values()),
        "errors_by_status": errors,
        "window_s": window,
        "delivery_latency": latency_summary(latencies),
        "server_cpu_cores_busy": server_cpu,
        "server_cpu_ms_per_delivery": server_cpu / (len(latencies) / window) * 1000
        if latencies
        else None,
        "load_average_1m": {"before": round(load0[0], 2), "after": round(load1[0], 2)},
        "tag": tag,
        "server_processes": len(tree),
        "clients_cpu_cores_busy": sum(r["cpu"] for r in results) / window,
        "machine_cpu_cores_busy": (ticks1[0] - ticks0[0]) / (ticks1[1] - ticks0[1]) * cpus
        if ticks1[1] > ticks0[1]
        else None,
        "server_side_sample": {
            "what": "ledger rows and signed checkpoints (one per write transaction) the "
            "server added while this process slept through the timed window",
            "events_committed": size1 - size0,
            "transactions": commits,
            "events_per_transaction": (size1 - size0) / commits if commits else None,
        },
    }
    return summary, results


def _baseline(
    core: App, secret: bytes, v: Variant, results: list[dict[str, Any]], sizes: Sizes, tag: str
) -> dict[str, Any]:
    """The same deliveries the clients sent (run ``tag``), in-process: bare HMAC check +
    ingest."""
    tenant = f"cmp-base-{v.name}"
    core.tenants.create(tenant, "GB")
    phones = sizes.webhook_phones

    def deliveries(kind: str) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for r in results:
            lo, hi = (
                (0, r["n_warm"]) if kind == "warm" else (r["n_warm"], r["n_warm"] + r["n_timed"])
            )
            failed = set(r["failed"])
            out.extend((i, r["worker"]) for i in range(lo, hi) if i not in failed)
        out.sort()  # interleaved across workers, as the server saw them
        return [(w, i) for i, w in out]

    def prepared(picks: list[tuple[int, int]]) -> list[tuple[str, str, str, bytes, list[Any]]]:
        ts = str(int(time.time()))
        items = []
        for w, i in picks:
            body = client.body(tag, v.per_delivery, w, i, phones)
            msg_id = client.msg_id(tag, w, i)
            events = [
                EventInput(source="web", **ev)
                for ev in client.events(tag, v.per_delivery, w, i, phones)
            ]
            items.append((msg_id, ts, client.sign(secret, msg_id, ts, body), body, events))
        return items

    group = v.baseline_deliveries
    cap = max(1, sizes.webhook_baseline_events // v.per_delivery)
    timed_all = deliveries("timed")
    timed = prepared(timed_all[: cap - cap % group or group])
    warm = prepared(deliveries("warm")[: max(group, 1000 // v.per_delivery)])
    ingest = core.ingest.ingest

    def replay(items: list[tuple[str, str, str, bytes, list[Any]]]) -> list[float]:
        times = []
        for start in range(0, len(items), group):
            chunk = items[start : start + group]
            t0 = time.perf_counter()
            events: list[EventInput] = []
            for msg_id, ts, header, body, evs in chunk:
                given = base64.b64decode(header.partition(",")[2])
                signed = f"{msg_id}.{ts}.".encode() + body
                expected = hmac.new(secret, signed, hashlib.sha256).digest()
                if not hmac.compare_digest(expected, given):
                    raise RuntimeError("baseline HMAC check failed")
                events.extend(evs)
            answers = ingest(tenant, "GB", events, batch=True)
            times.append(time.perf_counter() - t0)
            if not all(a.created for a in answers):
                raise RuntimeError("baseline events were not all recorded as new")
        return times

    replay(warm)
    times = replay(timed)
    events = len(timed) * v.per_delivery
    return {
        "rate": events / sum(times),
        "events": events,
        "deliveries": len(timed),
        "deliveries_sent_in_timed_window": len(timed_all),
        "capped": len(timed) < len(timed_all),
        "warmup_deliveries_excluded": len(warm),
        "events_per_transaction": group * v.per_delivery,
        "transaction_ms": latency_summary(times),
        "threads": 1,
    }


def _handle_in_process(core: App, v: Variant, sizes: Sizes) -> dict[str, Any]:
    """Diagnostic beside each figure: ``CmpWebhookService.handle`` (the route's whole body:
    tenant checks, signature, replay lookup, adapter, ingest, stored answer) called directly,
    one thread, no HTTP: so no concurrency either, one transaction per delivery."""
    tenant = f"cmp-handle-{v.name}"
    secret = secret_bytes(str(core.tenants.create(tenant, "GB")["webhook_secret"]))
    handle = core.cmp_webhooks.handle
    variant = f"handle-{v.name}"

    def deliver(i: int) -> None:
        body = client.body(variant, v.per_delivery, 0, i, sizes.webhook_phones)
        headers = client.headers(secret, client.msg_id(variant, 0, i), body)
        if handle(tenant, "generic", headers, body).status != 201:
            raise RuntimeError("in-process webhook delivery was not recorded")

    warm = max(5, 100 // v.per_delivery)
    for i in range(warm):
        deliver(i)
    times: list[float] = []
    cpu0, t_start = time.process_time(), time.perf_counter()
    i = warm
    while time.perf_counter() - t_start < 2.0 and i < warm + 100_000:
        t0 = time.perf_counter()
        deliver(i)
        times.append(time.perf_counter() - t0)
        i += 1
    wall = time.perf_counter() - t_start
    return {
        "events_per_s": len(times) * v.per_delivery / wall,
        "deliveries": len(times),
        "delivery_ms": latency_summary(times),
        "cpu_ms_per_delivery": (time.process_time() - cpu0) / len(times) * 1000,
        "what": "diagnostic, not a figure: CmpWebhookService.handle called in-process, one "
        "thread, 2 s, warm-up excluded; one transaction per delivery (nothing to group)",
    }


def run(backend: Backend, core: App, sizes: Sizes) -> list[Figure]:
    variants = [
        Variant("single", 1, sizes.webhook_workers),
        Variant("batch", sizes.webhook_batch, 1),
    ]
    env = {**os.environ, **backend.env}
    figs = [
        Figure(
            backend.name,
            v.key,
            f"webhook events/s over HTTP, {v.per_delivery} event"
            f"{'' if v.per_delivery == 1 else 's'}/delivery, {sizes.webhook_workers} clients",
            "events/s",
            baseline_title=f"in-process HMAC check + ingest(batch=True), "
            f"{v.per_delivery * v.baseline_deliveries} events/txn",
            floor=FLOOR,
            floor_kind="min",
        )
        for v in variants
    ]
    if not _cli().exists():
        for f in figs:
            f.skipped = f"skipped: {_cli()} not installed"
        return figs
    created = create_tenant(env, TENANT)
    if isinstance(created, str):
        for f in figs:
            f.skipped = created
        return figs
    secret = secret_bytes(created["webhook_secret"])

    # The figure: one HTTP process per core (serve --workers N); beside it, the same load on
    # one process (the CLI default) for comparison.
    cores = os.cpu_count() or 1
    http_runs: dict[tuple[int, str], tuple[dict[str, Any], list[dict[str, Any]]]] = {}
    for processes in dict.fromkeys((cores, 1)):
        port = free_port()
        log = backend.workdir / f"server-webhook-{processes}.log"
        server = _start_server(env, port, log, "--workers", str(processes))
        try:
            # One signed probe: it must be accepted and recorded before anything is timed.
            probe_id = f"probe{processes}"
            probe_body = client.body(probe_id, 1, 0, 0, sizes.webhook_phones)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request(
                "POST",
                PATH,
                body=probe_body,
                headers=client.headers(secret, f"msg_{probe_id}", probe_body),
            )
            answer = conn.getresponse()
            text = answer.read()
            conn.close()
            if answer.status != 201:
                raise RuntimeError(f"webhook probe failed: {answer.status} {text[:300]!r}")
            for v in variants:
                tag = f"{v.name}{processes}p"
                http_runs[(processes, v.name)] = _drive(
                    backend, port, secret, v, sizes, server.pid, tag
                )
        finally:
            _stop(server)

    for fig, v in zip(figs, variants, strict=True):
        summary, results = http_runs[(cores, v.name)]
        one_process = http_runs[(1, v.name)][0]
        base = _baseline(core, secret, v, results, sizes, str(summary["tag"]))
        direct = _handle_in_process(core, v, sizes)
        fig.value = summary.pop("throughput_events")
        fig.baseline = base.pop("rate")
        fig.details = {
            "server": f"consentgate serve --workers {cores}: {cores} uvicorn processes "
            "sharing the port, background workers on (in the parent process), access log on",
            "request": f"POST {PATH} (generic adapter), Standard Webhooks headers: unique "
            "webhook-id, webhook-timestamp now, v1 HMAC-SHA256 signature; expect 201",
            "body": "one event object"
            if v.per_delivery == 1
            else f'{{"events": [{v.per_delivery} events]}}',
            "events": "unique consent_id each; marketing_rcs granted; "
            f"{sizes.webhook_phones:,} GB mobile numbers {client.PHONE_PREFIX}xxxxx",
            "client": "python -m bench.webhook_client per client (stdlib http.client, "
            "keep-alive), one delivery in "
            "flight each; body + signature built before each request's clock starts",
            "workers": sizes.webhook_workers,
            "warmup_s_excluded": sizes.webhook_warmup_seconds,
            "duration_s": sizes.webhook_seconds,
            "http": summary,
            "http_one_process": {
                "what": "the same clients against consentgate serve with one HTTP process "
                "(the CLI default), right after the run above",
                **one_process,
            },
            "baseline": {
                **base,
                "what": "one thread, this process: base64-decode the v1 signature, "
                "HMAC-SHA256 over id.timestamp.body, compare_digest, for every delivery; "
                "core.ingest.ingest(batch=True) of the deliveries' events into a fresh "
                "tenant, the same consent_ids and phones the clients sent in the timed "
                "window; bodies, signatures and EventInputs built untimed",
            },
            "handle_in_process": direct,
            "note": f"clients and server share the machine's {os.cpu_count()} CPUs",
        }
    return figs
