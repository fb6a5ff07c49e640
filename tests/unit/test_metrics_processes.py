"""Counters shared by the processes of ``serve --workers N``: each process records into the
shared directory, and a scrape answered by any one of them counts what all of them did.
Real separate interpreters (prometheus_client picks its value store per process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from consentgate.observability.metrics import MULTIPROC_ENV

_PROCESS = """
import sys
from pathlib import Path
from prometheus_client import generate_latest
from consentgate.observability.metrics import Metrics, share_across_processes
if sys.argv[3] == "parent":
    share_across_processes(Path(sys.argv[1]))
metrics = Metrics()
n = int(sys.argv[2])
metrics.consent_recorded("acme", [("marketing_rcs", "granted", "web")] * n, replayed=1)
metrics.http_request("POST", "/v1/consent-events", 201, 0.01)
sys.stdout.write(generate_latest(metrics.exposition_registry()).decode())
"""


def _run(directory: Path, n: int, which: str) -> str:
    """``parent``: switches itself over, as ``serve`` does before building its App;
    ``worker``: started with the directory in its environment, as uvicorn's workers are."""
    env = {k: v for k, v in os.environ.items() if k != MULTIPROC_ENV}
    if which == "worker":
        env[MULTIPROC_ENV] = str(directory)
    done = subprocess.run(
        [sys.executable, "-c", _PROCESS, str(directory), str(n), which],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout


def _value(scrape: str, name: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(scrape)
        for s in family.samples
        if s.name == name
    )


def test_a_scrape_adds_up_every_process(tmp_path: Path) -> None:
    shared = tmp_path / "metrics"
    first = _run(shared, 3, "parent")  # empties the directory first
    assert _value(first, "consentgate_consent_events_total") == 3
    second = _run(shared, 4, "worker")
    assert _value(second, "consentgate_consent_events_total") == 7
    assert _value(second, "consentgate_consent_replays_total") == 2
    assert _value(second, "consentgate_http_requests_total") == 2
    assert _value(second, "consentgate_build_info") == 1  # this process's, not summed
    restarted = _run(shared, 1, "parent")  # a new server: counters from zero
    assert _value(restarted, "consentgate_consent_events_total") == 1
