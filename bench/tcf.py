"""Figure 7: IAB strings decoded/s in one process: TC strings with
``consentgate.cmp.tcf.decode_tc_string`` (floor ≥ 20,000/s) and GPP strings with
``consentgate.cmp.gpp.decode_gpp_string``, over the reference-encoder fixture strings in
tests/fixtures/cmp/cmp_fixtures.json. Baseline: base64url-decoding the same strings' segments
(``base64.urlsafe_b64decode`` with padding), i.e. what the bytes cost before any bit is read.

No database: the figures are the same for both backends and are measured once.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import REPO, Figure, latency_summary, percentile
from bench.config import Sizes
from consentgate.cmp.gpp import decode_gpp_string
from consentgate.cmp.tcf import decode_tc_string

FIXTURES = REPO / "tests" / "fixtures" / "cmp" / "cmp_fixtures.json"
FLOOR_TCF = 20_000.0
BACKEND = "in-process"


def _b64_tcf(s: str) -> list[bytes]:
    decode = base64.urlsafe_b64decode
    return [decode(seg + "=" * (-len(seg) % 4)) for seg in s.split(".")]


def _b64_gpp(s: str) -> list[bytes]:
    decode = base64.urlsafe_b64decode
    return [
        decode(seg + "=" * (-len(seg) % 4))
        for section in s.split("~")
        for seg in section.split(".")
    ]


def _passes(
    fn: Callable[[str], Any], strings: list[str], warm: int, seconds: float
) -> tuple[list[float], float]:
    """Seconds per pass over ``strings`` (``warm`` passes first, untimed; then passes until
    ``seconds`` have gone by, bounded in count too) and the share of one CPU the process got
    meanwhile (< 1: other work on the machine took turns on this core)."""
    for _ in range(warm):
        for s in strings:
            fn(s)
    clock = time.perf_counter
    times: list[float] = []
    cpu0, t_start = time.process_time(), clock()
    while len(times) < 1_000_000:
        t0 = clock()
        for s in strings:
            fn(s)
        t1 = clock()
        times.append(t1 - t0)
        if t1 - t_start >= seconds:
            break
    return times, (time.process_time() - cpu0) / (clock() - t_start)


def _per_string_us(fn: Callable[[str], Any], fixtures: list[dict[str, Any]]) -> dict[str, float]:
    """Mean µs per call for each fixture (diagnostic: which strings cost most)."""
    out = {}
    for f in fixtures:
        s = f["encoded"]
        for _ in range(50):
            fn(s)
        t0 = time.perf_counter()
        for _ in range(500):
            fn(s)
        out[f["name"]] = round((time.perf_counter() - t0) / 500 * 1e6, 2)
    return out


def _figure(
    kind: str,
    fixtures: list[dict[str, Any]],
    decode: Callable[[str], Any],
    raw: Callable[[str], Any],
    sizes: Sizes,
) -> Figure:
    chosen = [f for f in fixtures if f["kind"] == kind]
    strings = [f["encoded"] for f in chosen]
    name = "TC" if kind == "tcf" else "GPP"
    fig = Figure(
        BACKEND,
        f"{kind}_decode",
        f"{name} strings decoded/s, {decode.__module__}.{decode.__name__}",
        "strings/s",
        baseline_title="base64.urlsafe_b64decode of the same strings' segments (padded)",
        floor=FLOOR_TCF if kind == "tcf" else None,
        floor_kind="min" if kind == "tcf" else "",
    )
    if not strings:
        fig.skipped = f"skipped: no {kind!r} strings in {FIXTURES}"
        return fig
    for s in strings:  # both paths must accept every string before anything is timed
        decode(s)
        raw(s)
    dec, dec_cpu = _passes(decode, strings, sizes.tcf_warmup_passes, sizes.tcf_seconds)
    base, base_cpu = _passes(raw, strings, sizes.tcf_warmup_passes, sizes.tcf_seconds)
    n = len(strings)
    fig.value = n * len(dec) / sum(dec)
    fig.baseline = n * len(base) / sum(base)
    fig.details = {
        "fixture_strings": n,
        "mean_length_chars": round(sum(map(len, strings)) / n, 1),
        "strings_decoded": n * len(dec),
        "warmup_passes_excluded": sizes.tcf_warmup_passes,
        "pass_ms": latency_summary(dec),
        "baseline_pass_ms": latency_summary(base),
        "rate_at_median_pass": n / percentile(dec, 50),
        "cpu_share_while_timed": round(dec_cpu, 3),
        "baseline_cpu_share_while_timed": round(base_cpu, 3),
        "per_string_mean_us": _per_string_us(decode, chosen),
        "fixtures": str(FIXTURES.relative_to(REPO)),
        "libraries": sorted({f.get("library", "?") for f in chosen}),
        "threads": 1,
        "note": "each pass decodes every fixture string of this kind once, in file order; "
        "cpu_share only shows time taken away by the scheduler, not a slower CPU (the other "
        "vCPU's load can slow this one down through shared caches/cores)",
    }
    return fig


def run(sizes: Sizes) -> list[Figure]:
    fixtures = json.loads(Path(FIXTURES).read_text())
    return [
        _figure("tcf", fixtures, decode_tc_string, _b64_tcf, sizes),
        _figure("gpp", fixtures, decode_gpp_string, _b64_gpp, sizes),
    ]
