"""Optional py-spy profiles of a server process, for ``--profile`` (py-spy is not a
dependency: install it into the venv for a profiling session, uninstall it afterwards).

``Recorder`` samples every thread of a process, idle ones included (``--threads --idle``),
in py-spy's raw (collapsed-stack) format; ``summarize`` turns that into a short text: the
share of each thread's samples, and for the chosen thread the consentgate functions on its
stacks (inclusive) and the leaf frames grouped by library.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<fn>.*) \((?P<file>[^():]*?)(?::\d+)?\)$")


def executable() -> Path | None:
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return beside
    found = shutil.which("py-spy")
    return Path(found) if found else None


def version() -> str:
    exe = executable()
    if exe is None:
        return "not installed"
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=10)
    return out.stdout.strip()


class Recorder:
    def __init__(self, pid: int, raw_out: Path, rate: int = 200) -> None:
        exe = executable()
        if exe is None:
            raise FileNotFoundError("py-spy is not installed")
        raw_out.parent.mkdir(parents=True, exist_ok=True)
        self.raw_out = raw_out
        self.rate = rate
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [
                str(exe),
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(rate),
                "--format",
                "raw",
                "--threads",
                "--idle",
                "--output",
                str(raw_out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(0.5)  # attached before the caller starts what is profiled
        if self.proc.poll() is not None:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"py-spy exited at once: {err.strip()[-300:]}")

    def stop(self) -> float:
        """Stop sampling (py-spy writes its output on SIGINT); seconds recorded."""
        seconds = time.monotonic() - self.started
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return seconds


def _parse(raw: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in raw.read_text(errors="replace").splitlines():
        frames, _, count = line.rpartition(" ")
        if frames and count.isdigit():
            stacks.append((frames.split(";"), int(count)))
    return stacks


def _short(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    path = m.group("file")
    for marker in ("site-packages/", "lib/python3.11/", "src/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{m.group('fn')} ({path})"


def _library(frame: str) -> str:
    m = _FRAME.match(frame)
    path = m.group("file") if m else frame
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0]
    if "consentgate/" in path:
        return "consentgate." + path.split("consentgate/", 1)[1].split("/", 1)[0]
    if "lib/python3" in path:
        return "stdlib:" + path.rsplit("/", 1)[-1].removesuffix(".py")
    return path or "?"


def _thread_kind(frames: list[str]) -> str:
    text = ";".join(frames)
    if "delivery/worker.py" in text:
        return "dispatch worker (DispatchWorker._run)"
    if "_worker (concurrent/futures" in text or "WorkerThread" in text:
        return "threadpool workers (request handlers run in threads)"
    if "asyncio" in text or "uvicorn" in text:
        return "event loop (uvicorn, ASGI, async routes)"
    if "gate/notify.py" in text:
        return "LISTEN/NOTIFY listener"
    return "other"


# Leaf frames (shortened) where a thread sleeps: the event loop in epoll (its innermost Python
# frame is Runner.run), idle threadpool workers, queue and lock waits. A database or HTTP
# round trip is not in this list: for the thread that made it, that wait is its work.
_WAITS = (
    "Runner.run (asyncio/runners.py)",
    "select (selectors.py)",
    "Condition.wait (threading.py)",
    "wait (threading.py)",
    "_wait_for_tstate_lock (threading.py)",
    "get (queue.py)",
)
_DRIVER_CALLS = (
    "do_execute (",
    "do_executemany (",
    "do_commit (",
    "do_rollback (",
    "do_begin (",
    "_exec_driver_sql (",
)


def _is_wait(frames: list[str]) -> bool:
    if _thread_kind(frames) == "LISTEN/NOTIFY listener":
        return True  # blocked on the connection until a NOTIFY comes
    return _short(frames[-1]) in _WAITS


def bucket(frames: list[str]) -> str:
    """What a sample of a request-handling thread was doing, coarsely."""
    text = ";".join(frames)
    leaf = frames[-1]
    if "httpx/" in text or "httpcore/" in text:
        return "HTTP calls to the sandbox carrier (httpx; includes waiting for its reply)"
    if "psycopg/" in leaf or any(c in leaf for c in _DRIVER_CALLS) or "sqlite3" in leaf:
        return "database driver: statements, commits (fsync on SQLite), round trips"
    if "sqlalchemy/" in leaf:
        return "SQLAlchemy in Python (building, compiling, cache keys, results, pool)"
    if "cryptography/" in text or "crypto/" in leaf:
        return "crypto (AES-GCM unwrap, HMAC, HPKE/Ed25519 where used)"
    if _is_wait(frames):
        return "waiting (idle, locks, queues)"
    return "other Python (consentgate, pydantic, json, stdlib)"


def summarize(raw: Path, focus: str, seconds: float, rate: int, top: int = 30) -> str:
    """A text summary of ``raw``; ``focus`` names the thread kind to break down."""
    stacks = _parse(raw)
    by_kind: Counter[str] = Counter()
    threads: dict[str, set[str]] = {}
    focus_stacks: list[tuple[list[str], int]] = []
    for frames, n in stacks:
        kind = _thread_kind(frames)
        by_kind[kind] += n
        threads.setdefault(kind, set()).add(frames[0])
        if kind == focus:
            focus_stacks.append((frames, n))
    total = sum(by_kind.values())
    lines = [
        f"## samples by thread kind ({total} samples, {rate} Hz × {seconds:.1f} s per thread "
        f"= {rate * seconds:.0f} per busy-or-idle thread; --idle: waits are sampled too)"
    ]
    busy: Counter[str] = Counter()
    for frames, n in stacks:
        if not _is_wait(frames):
            busy[_thread_kind(frames)] += n
    for kind, n in by_kind.most_common():
        per_thread = rate * seconds * max(1, len(threads[kind]))
        lines.append(
            f"{n:8d}  {len(threads[kind]):2d} thread(s)  {n / per_thread:6.1%} sampled, "
            f"{busy[kind] / per_thread:6.1%} not in a known wait  {kind}"
        )
    focus_total = sum(n for _, n in focus_stacks)
    lines.append(f"## {focus}: where its time goes (coarse buckets)")
    buckets: Counter[str] = Counter()
    for frames, n in focus_stacks:
        buckets[bucket(frames)] += n
    for b, n in buckets.most_common():
        lines.append(f"{n / max(1, focus_total):6.1%}  {b}")
    lines.append(f"## {focus}: consentgate functions on the stack (inclusive), {focus_total}")
    inclusive: Counter[str] = Counter()
    for frames, n in focus_stacks:
        seen = {_short(f) for f in frames if "consentgate/" in f}
        for f in seen:
            inclusive[f] += n
    for f, n in inclusive.most_common(top):
        lines.append(f"{n / max(1, focus_total):6.1%}  {f}")
    lines.append(f"## {focus}: leaf frame by library (self time, waits included)")
    leaves: Counter[str] = Counter()
    leaf_frames: Counter[str] = Counter()
    for frames, n in focus_stacks:
        leaves[_library(frames[-1])] += n
        leaf_frames[_short(frames[-1])] += n
    for lib, n in leaves.most_common(15):
        lines.append(f"{n / max(1, focus_total):6.1%}  {lib}")
    lines.append(f"## {focus}: top leaf frames")
    for f, n in leaf_frames.most_common(20):
        lines.append(f"{n / max(1, focus_total):6.1%}  {f}")
    return "\n".join(lines) + "\n"
