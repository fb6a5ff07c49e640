"""One open-loop load generator process for :mod:`bench.load` (``python -m bench.load_client``).

It sends prepared requests at a *fixed rate* — request ``i`` is due at ``start + i / rate``
whatever happened to the ones before — over ``connections`` keep-alive connections, and
measures each latency from the request's due time, not from when a connection became free.
A server that falls behind therefore shows its queueing in p99 instead of silently slowing
the generator down (the "coordinated omission" a closed loop of clients hides).

Standard library only (plus uvloop when installed), raw HTTP/1.1 on asyncio streams: a
request costs the generator a few tens of microseconds, so on a 2-core machine most of the
CPU is left to the server under test. Protocol: settings as JSON on stdin (including the
path of a file of prepared requests, one JSON ``[method, path, headers, body]`` per line);
the client connects, prints ``ready``, waits for ``go <unix start time>``, runs, and prints
writes its results as JSON to the file the settings name.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

Request = tuple[bytes, bytes]  # (head, body)


def _encode(method: str, path: str, headers: dict[str, str], body: str | None) -> Request:
    payload = (body or "").encode()
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if payload or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(payload)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), payload


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
            break
    if length:
        await reader.readexactly(length)
    return status


async def _run(cfg: dict[str, Any], requests: list[Request]) -> dict[str, Any]:
    port, rate, duration = int(cfg["port"]), float(cfg["rate"]), float(cfg["duration"])
    warmup = float(cfg.get("warmup", 1.0))
    total = int((warmup + duration) * rate)
    conns = []
    for _ in range(int(cfg["connections"])):
        conns.append(await asyncio.open_connection("127.0.0.1", port))
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    line = await loop.run_in_executor(None, sys.stdin.readline)
    start_wall = float(line.split()[1])
    clock = time.monotonic
    start = clock() + (start_wall - time.time())
    measured_from = start + warmup
    # A server far behind would otherwise take minutes to drain the queue the generator
    # built; past the window (and a second's grace) nothing new is sent.
    give_up_at = measured_from + duration + 1.0
    latencies: list[float] = []
    errors: dict[str, int] = {}
    late_starts = 0
    acknowledged = 0  # every 2xx, warm-up included (the parent checks them in the ledger)
    next_i = 0

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal next_i, late_starts, acknowledged
        while next_i < total:
            if clock() > give_up_at:
                return  # overloaded: what is still due is counted as not sent
            i = next_i
            next_i += 1
            due = start + i / rate
            delay = due - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.001:
                late_starts += 1  # every connection was busy when this one was due
            head, body = requests[i % len(requests)]
            try:
                writer.write(head + body)
                status = await _read_response(reader)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                return
            acknowledged += 200 <= status < 300
            if due >= measured_from:
                if 200 <= status < 300:
                    latencies.append(clock() - due)
                else:
                    errors[str(status)] = errors.get(str(status), 0) + 1

    cpu0 = time.process_time()
    await asyncio.gather(*(connection(r, w) for r, w in conns))
    ended = clock()
    for _, w in conns:
        w.close()
    return {
        "sent": next_i,
        "not_sent": total - next_i,
        "acknowledged": acknowledged,
        "latencies": latencies,
        "errors": errors,
        "late_starts": late_starts,
        "window_s": max(ended - measured_from, 1e-9),
        "cpu_s": time.process_time() - cpu0,
    }


def main() -> None:
    cfg = json.loads(sys.stdin.readline())
    with open(cfg["requests"], encoding="utf-8") as fh:
        requests = [_encode(*json.loads(line)) for line in fh]
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is in the lock; stdlib still works
        runner = asyncio.run
    result = runner(_run(cfg, requests))
    with open(cfg["result"], "w", encoding="utf-8") as fh:
        json.dump(result, fh)
    print("done", flush=True)


if __name__ == "__main__":
    main()
