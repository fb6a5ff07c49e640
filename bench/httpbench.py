"""Figure 3: HTTP lookups/s with p50/p99 against the real server (``consentgate serve``),
driven by keep-alive clients in separate processes; baseline GET /healthz on the same server.

All traffic is on 127.0.0.1; every client loop is bounded in time and in count.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench import data
from bench.backends import Backend
from bench.common import Figure, create_tenant, free_port, latency_summary, process_cpu_seconds
from bench.config import Sizes
from consentgate.bootstrap import App

TENANT = "web"


def _cli() -> Path:
    return Path(sys.executable).parent / "consentgate"


def _worker(
    base_url: str,
    api_key: str,
    paths: list[str],
    warmup: float,
    duration: float,
    max_requests: int,
    barrier: Any,
    out: Any,
) -> None:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=10.0) as client:
        client.get("/healthz")  # open the keep-alive connection before the clock starts
        barrier.wait()
        clock = time.monotonic
        t_go = clock()
        warm_until, stop_at = t_go + warmup, t_go + warmup + duration
        i = 0
        while clock() < warm_until and i < max_requests:
            client.get(paths[i % len(paths)])
            i += 1
        cpu0, t_start, i = time.process_time(), clock(), 0
        t_end = t_start
        while i < max_requests:
            path = paths[i % len(paths)]
            i += 1
            t0 = clock()
            status: int | str
            try:
                status = client.get(path).status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            t_end = clock()
            if status == 200:
                latencies.append(t_end - t0)
            else:
                errors[str(status)] = errors.get(str(status), 0) + 1
            if t_end >= stop_at:
                break
    out.put(
        {
            "latencies": latencies,
            "errors": errors,
            "t_start": t_start,
            "t_end": t_end,
            "cpu": time.process_time() - cpu0,
        }
    )


def _drive(
    base_url: str, api_key: str, paths: list[str], sizes: Sizes, server_pid: int
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(sizes.http_workers + 1)
    out = ctx.Queue()
    procs = []
    for w in range(sizes.http_workers):
        mine = paths[:]
        random.Random(100 + w).shuffle(mine)
        procs.append(
            ctx.Process(
                target=_worker,
                args=(
                    base_url,
                    api_key,
                    mine,
                    sizes.http_warmup_seconds,
                    sizes.http_seconds,
                    sizes.http_max_requests,
                    barrier,
                    out,
                ),
                daemon=True,
            )
        )
    for p in procs:
        p.start()
    barrier.wait(timeout=60)
    time.sleep(sizes.http_warmup_seconds)
    cpu0, t0 = process_cpu_seconds(server_pid), time.monotonic()
    time.sleep(sizes.http_seconds)
    server_cpu = (process_cpu_seconds(server_pid) - cpu0) / (time.monotonic() - t0)
    timeout = sizes.http_warmup_seconds + sizes.http_seconds + 60
    results = [out.get(timeout=timeout) for _ in procs]
    for p in procs:
        p.join(timeout=10)
    latencies = [x for r in results for x in r["latencies"]]
    errors: dict[str, int] = {}
    for r in results:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    window = max(r["t_end"] for r in results) - min(r["t_start"] for r in results)
    return {
        "throughput": len(latencies) / window,
        "ok": len(latencies),
        "errors": sum(errors.values()),
        "errors_by_status": errors,
        "window_s": window,
        **latency_summary(latencies),
        "server_cpu_cores_busy": server_cpu,
        "clients_cpu_cores_busy": sum(r["cpu"] for r in results) / window,
    }


def _start_server(
    env: dict[str, str], port: int, log: Path, *extra: str
) -> subprocess.Popen[bytes]:
    cmd = [str(_cli()), "serve", "--host", "127.0.0.1", "--port", str(port), *extra]
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-800:]
            raise RuntimeError(f"consentgate serve exited with {proc.returncode}: {tail}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    _stop(proc)
    raise RuntimeError("consentgate serve did not answer /healthz within 60 s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=15)


def run(backend: Backend, core: App, phones: list[str], sizes: Sizes) -> Figure:
    env = {**os.environ, **backend.env}
    fig = Figure(
        backend.name,
        "http_lookup",
        f"HTTP lookups/s, {sizes.http_workers} keep-alive clients",
        "req/s",
        baseline_title="GET /healthz, same server + clients",
    )
    if not _cli().exists():
        fig.skipped = f"skipped: {_cli()} not installed"
        return fig
    created = create_tenant(env, TENANT)
    if isinstance(created, str):
        fig.skipped = created
        return fig
    api_key = created["api_key"]

    # The tenant's subjects: one event each, through the real ingest path (not timed).
    hashed: list[str] = []
    evs = data.events(phones, len(phones), seed=4, tag="web")
    for start in range(0, len(evs), sizes.batch_size):
        results = core.ingest.ingest(
            TENANT, "GB", evs[start : start + sizes.batch_size], batch=True
        )
        hashed.extend(r.hashed_id for r in results)

    port = free_port()
    log = backend.workdir / "server.log"
    server = _start_server(env, port, log)
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base) as probe:
            r = probe.get(
                f"/v1/subjects/{hashed[0]}/consents",
                headers={"Authorization": f"Bearer {api_key}"},
            )
            if r.status_code != 200 or not r.json()["consents"]:
                raise RuntimeError(f"lookup probe failed: {r.status_code} {r.text[:200]}")
        lookup_paths = [f"/v1/subjects/{h}/consents" for h in hashed]
        lookups = _drive(base, api_key, lookup_paths, sizes, server.pid)
        health = _drive(base, api_key, ["/healthz"], sizes, server.pid)
    finally:
        _stop(server)
    fig.value = lookups.pop("throughput")
    fig.baseline = health.pop("throughput")
    fig.details = {
        "server": f"consentgate serve --host 127.0.0.1 --port {port} (one uvicorn process, "
        "access log on: the CLI default)",
        "request": "GET /v1/subjects/{hashed_id}/consents (Bearer API key)",
        "client": "httpx.Client per process (keep-alive), one request in flight each",
        "workers": sizes.http_workers,
        "warmup_s_excluded": sizes.http_warmup_seconds,
        "duration_s": sizes.http_seconds,
        "subjects": len(hashed),
        "lookup": lookups,
        "healthz": health,
        "note": f"clients and server share the machine's {os.cpu_count()} CPUs",
    }
    return fig
