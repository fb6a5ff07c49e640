"""A withdrawal acknowledged by one process is refused at once by another process's on-send
check, though that process had the grant in its consent cache (``serve --workers N``, a
separate ``consentgate worker``): the shared generation counters, on both stores.

Process A is this test's App; process B is a real second interpreter with its own App on the
same database and data directory, answering gate checks one line at a time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from consentgate.bootstrap import App
from consentgate.consent.ingest import EventInput
from consentgate.domain.clock import FixedClock
from consentgate.domain.timeutil import format_rfc3339
from consentgate.gate import generations
from consentgate.gate.cache import CachedState, StateCache
from consentgate.storage.engine import read_tx

_PROCESS_B = """
import json, sys
from consentgate.bootstrap import build
from consentgate.config import load_settings
app = build(load_settings(), run_migrations=False)
print("ready", flush=True)
for line in sys.stdin:
    tenant, ref, purpose = line.split()
    d = app.gate.check(tenant, ref, purpose)
    reason = None if d.reason is None else d.reason.value
    print(json.dumps({"allowed": d.allowed, "reason": reason, "cached": d.from_cache}), flush=True)
app.close()
"""


class OtherProcess:
    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _PROCESS_B],
            env={**os.environ, **env},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._line() == "ready"

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line:
            raise RuntimeError(f"process B exited with {self.proc.wait(timeout=10)}")
        return line

    def check(self, tenant: str, ref: str, purpose: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{tenant} {ref} {purpose}\n")
        self.proc.stdin.flush()
        answer: dict[str, Any] = json.loads(self._line())
        return answer

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def other(env: dict[str, str], core: App) -> Iterator[OtherProcess]:
    process = OtherProcess(env)  # after ``core``: the schema exists
    yield process
    process.close()


def _record(core: App, clock: FixedClock, consent_id: str, status: str) -> str:
    (result,) = core.ingest.ingest(
        "acme",
        "GB",
        [
            EventInput(
                consent_id=consent_id,
                consent_type="marketing_rcs",
                status=status,
                timestamp=format_rfc3339(clock.now()),
                phone="+447911123456",
            )
        ],
        batch=False,
    )
    with read_tx(core.engine) as conn:
        return core.links.known_hashed(conn, "acme", [result.hashed_id])[result.hashed_id]


def test_withdrawal_in_one_process_is_refused_at_once_by_another(
    core: App, tenant: dict[str, Any], clock: FixedClock, other: OtherProcess
) -> None:
    ref = _record(core, clock, "c-grant", "granted")
    assert other.check("acme", ref, "marketing_rcs") == {
        "allowed": True,
        "reason": None,
        "cached": False,
    }
    # B now answers from its cache: without the shared counters it would go on doing so
    # for gate_cache_seconds (30 s), whatever another process commits.
    assert other.check("acme", ref, "marketing_rcs")["cached"] is True
    clock.advance(timedelta(seconds=1))
    _record(core, clock, "c-withdraw", "withdrawn")  # returned: acknowledged
    assert other.check("acme", ref, "marketing_rcs") == {
        "allowed": False,
        "reason": "withdrawn",
        "cached": False,
    }
    # And the other way round: B's cache is exact again, a grant from A is seen at once.
    assert other.check("acme", ref, "marketing_rcs")["cached"] is True
    clock.advance(timedelta(seconds=1))
    _record(core, clock, "c-regrant", "granted")
    assert other.check("acme", ref, "marketing_rcs")["allowed"] is True


def test_a_read_that_started_before_a_change_is_not_cached_after_it(tmp_path: Path) -> None:
    """The cross-process version of the stale-put race: B takes its token, A commits and
    bumps, B's read (old state) may be stored but is never answered from the cache."""
    path = tmp_path / "db-gate"
    a = StateCache(shared=generations.SharedGenerations(path))
    b = StateCache(shared=generations.SharedGenerations(path))
    key = ("acme", "ref-1", "marketing_rcs")
    token = b.token(key)  # B starts reading the store...
    a.changed([key])  # ...A commits a withdrawal and acknowledges it...
    b.put(key, CachedState("granted", None, 0), token)  # ...B's stale read arrives
    assert b.get(key) is None
    b.put(key, CachedState("withdrawn", None, 1), b.token(key))
    assert b.get(key) == CachedState("withdrawn", None, 1)


def test_counters_are_shared_per_database_file_and_survive_reopening(tmp_path: Path) -> None:
    first = generations.SharedGenerations(tmp_path / "one-gate")
    other_db = generations.SharedGenerations(tmp_path / "two-gate")
    index = generations.slot("acme", "ref-1", "marketing_rcs")
    first.bump([index, index])  # one bump per call, however often a key is named
    assert first.read(index) == 1
    assert other_db.read(index) == 0
    first.close()
    assert generations.SharedGenerations(tmp_path / "one-gate").read(index) == 1
