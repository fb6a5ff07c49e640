"""Real processes for the reliability scenarios: the sandbox carrier, ``consentgate serve``,
``consentgate worker --kind dispatch`` and, for PostgreSQL, a cluster of the suite's own.

The scenarios kill these with SIGKILL and stop the database under them, so nothing here is
shared with the rest of the test session: the PostgreSQL cluster is started for this
directory alone (stopping it disturbs no other test), every stack gets its own data
directory, database and ports. The cluster keeps ``synchronous_commit`` on, unlike the
suite's fast one: a commit acknowledged before ``pg_ctl stop -m immediate`` must survive it,
which is what the scenarios check (``fsync`` stays off: the operating system does not crash
here, only the server).

The short form (``make test``) keeps every scenario small; ``CONSENTGATE_RELIABILITY=full``
(``make reliability``) runs more kills and bigger campaigns (:func:`size`).
"""

from __future__ import annotations

import atexit
import json
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from click.testing import Result
from typer.testing import CliRunner

from consentgate.cli import cli
from tests import pg

PURPOSE = "marketing_rcs"


def full() -> bool:
    return os.environ.get("CONSENTGATE_RELIABILITY", "").strip().lower() == "full"


def size(short: int, long: int) -> int:
    """A scenario's size: ``short`` in ``make test``, ``long`` under ``make reliability``."""
    return long if full() else short


def report(line: str) -> str:
    """What a scenario checked, with its counts: printed (``make reliability`` runs with
    ``-s``) and returned so the test asserts on the same line."""
    print(f"\n[reliability] {line}", flush=True)
    return line


def wait_for(what: str, check: Callable[[], bool], timeout: float, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


class ReliabilityCluster(pg.Cluster):
    # Durable commits (see the module docstring); fsync off, the machine does not crash.
    SETTINGS = "-c fsync=off -c full_page_writes=off "


class Zygote:
    """The forking parent of :mod:`tests.reliability.zygote`, started on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None

    def _started(self) -> subprocess.Popen[str]:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "tests.reliability.zygote"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=Path(__file__).resolve().parents[2],
            )
            atexit.register(self.close)
            assert self._proc.stdout is not None
            json.loads(self._proc.stdout.readline())  # {"ready": pid}
        return self._proc

    def spawn(self, program: str, args: list[str], env: dict[str, str], log: Path) -> int:
        with self._lock:
            proc = self._started()
            assert proc.stdin is not None and proc.stdout is not None
            request = {"program": program, "args": args, "env": env, "log": str(log)}
            proc.stdin.write(json.dumps(request) + "\n")
            proc.stdin.flush()
            return int(json.loads(proc.stdout.readline())["pid"])

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            self._proc.wait(timeout=10)


ZYGOTE = Zygote()


@dataclass
class Proc:
    """A process forked by the zygote, watched through a pidfd (it is not our child)."""

    name: str
    args: list[str]
    log: Path
    pid: int
    pidfd: int

    def alive(self) -> bool:
        return not select.select([self.pidfd], [], [], 0)[0]

    def wait(self, timeout: float) -> bool:
        return bool(select.select([self.pidfd], [], [], timeout)[0])

    def _signal(self, sig: int) -> None:
        with suppress(ProcessLookupError):
            signal.pidfd_send_signal(self.pidfd, sig)

    def kill9(self) -> None:
        self._signal(signal.SIGKILL)
        if not self.wait(10):
            raise RuntimeError(f"{self.name} survived SIGKILL")

    def stop(self) -> None:
        if self.alive():
            self._signal(signal.SIGTERM)
            if not self.wait(15):
                self.kill9()
        os.close(self.pidfd)
        self.pidfd = os.open(os.devnull, os.O_RDONLY)  # stop() may be called again

    def tail(self, chars: int = 1500) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@dataclass
class Stack:
    """One consentgate deployment on loopback: its env (database, data dir, sandbox URL and
    tokens), the processes started for it, and clients for the API and the carrier."""

    backend: str
    workdir: Path
    env: dict[str, str]
    sandbox_url: str
    api_port: int
    cluster: ReliabilityCluster | None = None
    procs: list[Proc] = field(default_factory=list)
    tenant: dict[str, Any] = field(default_factory=dict)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    # -- processes --------------------------------------------------------------------------

    def _spawn(self, name: str, program: str, args: list[str], health: str | None) -> Proc:
        log = self.workdir / f"{name}.log"
        pid = ZYGOTE.spawn(program, args, self.env, log)
        proc = Proc(name, args, log, pid, os.pidfd_open(pid))
        self.procs.append(proc)
        if health is not None:
            deadline = time.monotonic() + 60
            while True:
                if not proc.alive():
                    raise RuntimeError(f"{name} exited early:\n{proc.tail()}")
                try:
                    if httpx.get(health, timeout=1).status_code < 500:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    proc.kill9()
                    raise RuntimeError(f"{name} did not answer {health}:\n{proc.tail()}")
                time.sleep(0.05)
        return proc

    def start_sandbox(self) -> Proc:
        port = int(self.sandbox_url.rsplit(":", 1)[1])
        args = ["--port", str(port)]
        return self._spawn("sandbox", "sandbox", args, f"{self.sandbox_url}/devices")

    def start_serve(self, *args: str, name: str = "serve") -> Proc:
        argv = ["serve", "--host", "127.0.0.1", "--port", str(self.api_port), *args]
        return self._spawn(name, "consentgate", argv, f"{self.api_url}/healthz")

    def start_worker(self, name: str, *args: str) -> Proc:
        return self._spawn(name, "consentgate", ["worker", "--kind", "dispatch", *args], None)

    def cli(self, *args: str, check: bool = True) -> Result:
        """``consentgate ARGS`` against this deployment: the real command, run in this
        interpreter (Typer's runner) rather than a new one, which on a busy 2-core machine
        saves seconds of imports per call."""
        own = {k: v for k, v in self.env.items() if k.startswith("CONSENTGATE_")}
        result = CliRunner().invoke(cli, list(args), env=own)
        if check and result.exit_code != 0:
            raise RuntimeError(f"consentgate {' '.join(args)}: {result.output[-1500:]}")
        return result

    def create_tenant(self, name: str = "acme") -> dict[str, Any]:
        self.tenant = json.loads(self.cli("tenant", "create", name, "--region", "GB").stdout)
        return self.tenant

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    # -- clients ----------------------------------------------------------------------------

    def api(self, timeout: float = 10.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tenant['api_key']}"}
        return httpx.Client(base_url=self.api_url, headers=headers, timeout=timeout)

    def sandbox(self) -> httpx.Client:
        return httpx.Client(base_url=self.sandbox_url, timeout=30)

    def received(self) -> list[dict[str, Any]]:
        with self.sandbox() as carrier:
            r = carrier.get("/messages")
            r.raise_for_status()
            messages: list[dict[str, Any]] = r.json()["messages"]
            return messages

    # -- campaign helpers -------------------------------------------------------------------

    def give_devices(self, numbers: list[str]) -> None:
        with self.sandbox() as carrier:
            devices = [{"phone": n, "rcs": True, "native_e2ee": True} for n in numbers]
            carrier.put("/devices", json={"devices": devices}).raise_for_status()

    def consent(self, http: httpx.Client, numbers: list[str], status: str, tag: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3_600))
        for start in range(0, len(numbers), 1000):
            events = [
                {
                    "consent_id": f"{tag}-{start + i}",
                    "phone": n,
                    "consent_type": PURPOSE,
                    "status": status,
                    "timestamp": stamp,
                    "source": "web",
                }
                for i, n in enumerate(numbers[start : start + 1000])
            ]
            r = http.post("/v1/consent-events", json={"events": events})
            assert r.status_code == 201, r.text

    def campaign(self, http: httpx.Client, audience: list[str]) -> str:
        """Create a campaign to ``audience`` with a fresh template; returns its id (not sent)."""
        r = http.post("/v1/templates", json={"name": "t", "text": "Winter sale: 20% off."})
        assert r.status_code == 201, r.text
        r = http.post(
            "/v1/campaigns",
            json={"template_id": r.json()["template_id"], "consent_type": PURPOSE},
        )
        assert r.status_code == 201, r.text
        cid = str(r.json()["campaign_id"])
        body = "phone\n" + "".join(f"{n}\n" for n in audience)
        r = http.put(
            f"/v1/campaigns/{cid}/audience",
            content=body.encode(),
            headers={"content-type": "text/csv"},
        )
        assert r.status_code == 200, r.text
        return cid

    def wait_done(self, http: httpx.Client, cid: str, timeout: float) -> dict[str, Any]:
        status: dict[str, Any] = {}

        def done() -> bool:
            nonlocal status
            try:
                status = http.get(f"/v1/campaigns/{cid}").json()
            except httpx.TransportError:
                return False
            return status.get("status") == "done"

        wait_for(f"campaign {cid} to finish (last status {status})", done, timeout, 0.1)
        return status


def numbers(prefix: str, count: int, start: int = 0) -> list[str]:
    """Valid test numbers: ``prefix`` is +4479111, +4479112 or +4474001."""
    assert count + start <= 100_000
    return [f"{prefix}{i:05d}" for i in range(start, start + count)]


@contextmanager
def stack(
    backend: str,
    workdir: Path,
    cluster: ReliabilityCluster | None,
    *,
    carrier: bool = True,
    **extra: str,
) -> Iterator[Stack]:
    """A fresh deployment: a new database (SQLite file, or a database in the suite's own
    cluster, copied from its migrated template), the carrier running when ``carrier``,
    nothing else started."""
    workdir.mkdir(parents=True, exist_ok=True)
    if backend == "pg":
        assert cluster is not None
        name = f"r_{uuid.uuid4().hex[:12]}"
        cluster.execute(f"CREATE DATABASE {name} TEMPLATE rel_template")
        url = cluster.url(name)
    else:
        url = f"sqlite:///{workdir / 'var' / 'consentgate.db'}"
    sandbox_url = f"http://127.0.0.1:{pg.free_port()}"
    env = {
        **os.environ,
        "CONSENTGATE_DATA_DIR": str(workdir / "var"),
        "CONSENTGATE_DATABASE_URL": url,
        "CONSENTGATE_SQLITE_SYNCHRONOUS": "NORMAL",
        "CONSENTGATE_SANDBOX_URL": sandbox_url,
        "CONSENTGATE_SANDBOX_RBM_TOKEN": "rel-rbm-" + uuid.uuid4().hex,
        "CONSENTGATE_SANDBOX_TWILIO_TOKEN": "rel-twilio-" + uuid.uuid4().hex,
        "CONSENTGATE_LOG_FORMAT": "text",
        **extra,
    }
    api_port = pg.free_port()
    env["CONSENTGATE_PUBLIC_URL"] = f"http://127.0.0.1:{api_port}"
    deployment = Stack(backend, workdir, env, sandbox_url, api_port, cluster)
    try:
        if carrier:
            deployment.start_sandbox()
        yield deployment
    finally:
        deployment.close()


@dataclass
class Audience:
    """A campaign audience of three kinds: consent granted, granted then withdrawn, and
    never consented. Every number has an RCS device at the carrier, so only consent keeps a
    message from arriving."""

    granted: list[str]
    withdrawn: list[str]
    never: list[str]

    @property
    def everyone(self) -> list[str]:
        mixed = [*self.granted, *self.withdrawn, *self.never]
        random.Random(len(mixed)).shuffle(mixed)  # the kinds interleave in every batch
        return mixed


def mixed_audience(dep: Stack, http: httpx.Client, granted: int, other: int) -> Audience:
    aud = Audience(
        numbers("+4479111", granted),
        numbers("+4479112", other),
        numbers("+4474001", other),
    )
    dep.give_devices(aud.everyone)
    dep.consent(http, aud.granted + aud.withdrawn, "granted", "g")
    dep.consent(http, aud.withdrawn, "withdrawn", "w")
    return aud


def exactly_once(received: list[dict[str, Any]], aud: Audience) -> tuple[int, int, int, int]:
    """(eligible recipients with exactly one message, with none, with more than one,
    messages to ineligible numbers)."""
    counts = Counter(m["to"] for m in received)
    once = sum(counts[n] == 1 for n in aud.granted)
    none = sum(counts[n] == 0 for n in aud.granted)
    many = sum(counts[n] > 1 for n in aud.granted)
    wrong = sum(counts[n] for n in [*aud.withdrawn, *aud.never])
    return once, none, many, wrong
