"""Shared helpers: timing statistics, figure records, machine facts, ports."""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in [0, 100]) of ``values``."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def latency_summary(seconds: list[float]) -> dict[str, float]:
    """p50/p90/p99/max in milliseconds."""
    return {
        "n": len(seconds),
        "p50_ms": percentile(seconds, 50) * 1000,
        "p90_ms": percentile(seconds, 90) * 1000,
        "p99_ms": percentile(seconds, 99) * 1000,
        "max_ms": max(seconds) * 1000 if seconds else math.nan,
    }


@dataclass
class Figure:
    """One measured figure and the baseline measured beside it."""

    backend: str
    key: str
    title: str
    unit: str
    value: float | None = None
    baseline_title: str = ""
    baseline: float | None = None
    floor: float | None = None
    floor_kind: str = ""  # "min" (value >= floor) or "max" (value <= floor)
    skipped: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def met(self) -> bool | None:
        if self.floor is None or self.value is None:
            return None
        return self.value >= self.floor if self.floor_kind == "min" else self.value <= self.floor

    @property
    def ratio(self) -> float | None:
        """value / baseline (for times: how many times slower than the baseline)."""
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline

    def as_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "key": self.key,
            "title": self.title,
            "unit": self.unit,
            "status": self.skipped or "ok",
            "value": self.value,
            "baseline": None
            if self.baseline_title == ""
            else {"title": self.baseline_title, "value": self.baseline, "unit": self.unit},
            "value_over_baseline": self.ratio,
            "floor": None
            if self.floor is None
            else {
                "value": self.floor,
                "kind": ">=" if self.floor_kind == "min" else "<=",
                "met": self.met,
            },
            "details": self.details,
        }


def create_tenant(env: Mapping[str, str], name: str) -> dict[str, Any] | str:
    """``consentgate tenant create NAME --region GB`` as an operator runs it: the tenant's
    credentials (``api_key``, ``webhook_secret``...), or why it failed (a skip reason)."""
    cli = Path(sys.executable).parent / "consentgate"
    created = subprocess.run(
        [str(cli), "tenant", "create", name, "--region", "GB"],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if created.returncode != 0:
        return f"skipped: consentgate tenant create failed: {created.stderr.strip()[-300:]}"
    info: dict[str, Any] = json.loads(created.stdout)
    return info


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git_head() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _src_dirty() -> list[str] | None:
    """Uncommitted changes under src/ (others edit it while a run may be going on)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def machine_info() -> dict[str, Any]:
    mem_total = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_bytes": mem_total,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "sqlite": sqlite3.sqlite_version,
        "git_head": _git_head(),
        "src_uncommitted": _src_dirty(),
        "load_average_1_5_15": load_average(),
        "packages": {
            name: _version(name)
            for name in ("consentgate", "SQLAlchemy", "psycopg", "uvicorn", "fastapi", "httpx")
        },
    }


def load_average() -> list[float] | None:
    """Other work on the machine skews every figure: recorded at the start and end."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its (direct) child processes, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            children = (task / "children").read_text().split()
            pids.extend(int(c) for c in children)
    except OSError:
        pass
    total = 0.0
    for p in pids:
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total
