"""kill -9 the API process, again and again, while client threads ingest single events as fast
as it answers (``POST /v1/consent-events`` and signed CMP webhooks): every event it
acknowledged (2xx) is in the ledger afterwards with the content it was acknowledged with,
``consentgate ledger verify`` passes and proves the ledger extends every signed checkpoint
handed out just before a kill, and the latest-state view equals a replay of the ledger
through the pure rule (:func:`consentgate.domain.consent.fold`).

Clients retry what was not answered (a refused connection while the server is down, a reset
when it dies mid-request) under the same ``consent_id`` / ``webhook-id``, as a CMP would, so
an event that was committed but never acknowledged meets its replay after the restart.
Timestamps fall on a coarse grid and subjects are few, so late older events and equal
timestamps (withdrawn wins) both happen.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text
from standardwebhooks import Webhook

from consentgate.domain.consent import ConsentStatus, StateEntry, fold
from consentgate.domain.timeutil import format_rfc3339, from_micros, to_micros
from tests.reliability.procs import PURPOSE, ReliabilityCluster, numbers, report, size, stack

CLIENTS = 4


class Client(threading.Thread):
    """Sends events one at a time until told to stop; remembers what was acknowledged."""

    def __init__(self, index: int, url: str, tenant: dict[str, Any], phones: list[str]) -> None:
        super().__init__(name=f"ingest-{index}", daemon=True)
        self.index = index
        self.url = url
        self.tenant = tenant
        self.phones = phones
        self.rng = random.Random(index)
        self.stop = threading.Event()
        self.acked: dict[str, str] = {}  # consent_id -> status
        self.attempts = Counter[str]()
        self.refused: dict[str, int] = {}
        self.base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)

    def _event(self, n: int) -> dict[str, Any]:
        return {
            "consent_id": f"k{self.index}-{n}",
            "phone": self.rng.choice(self.phones),
            "consent_type": PURPOSE,
            "status": self.rng.choice(("granted", "withdrawn")),
            "timestamp": format_rfc3339(self.base + timedelta(minutes=self.rng.randrange(60))),
            "cmp_version": "cmp-7.1",
            "source": "web",
        }

    def _post(self, http: httpx.Client, event: dict[str, Any], webhook: bool) -> int:
        if not webhook:
            headers = {"Authorization": f"Bearer {self.tenant['api_key']}"}
            return http.post("/v1/consent-events", json=event, headers=headers).status_code
        body = json.dumps(event)
        when = datetime.now(UTC)  # re-signed on every retry, under the same webhook-id
        msg_id = "msg_" + event["consent_id"]
        signature = Webhook(self.tenant["webhook_secret"]).sign(msg_id, when, body)
        return http.post(
            f"/v1/tenants/{self.tenant['tenant']}/cmp/generic/events",
            content=body.encode(),
            headers={
                "webhook-id": msg_id,
                "webhook-timestamp": str(int(when.timestamp())),
                "webhook-signature": signature,
                "content-type": "application/json",
            },
        ).status_code

    def run(self) -> None:
        n = 0
        with httpx.Client(base_url=self.url, timeout=10) as http:
            while not self.stop.is_set():
                event, webhook = self._event(n), n % 2 == 1
                n += 1
                while not self.stop.is_set():
                    try:
                        status = self._post(http, event, webhook)
                    except httpx.TransportError as exc:
                        self.attempts[type(exc).__name__] += 1
                        time.sleep(0.02)
                        continue
                    self.attempts[str(status)] += 1
                    if 200 <= status < 300:
                        self.acked[event["consent_id"]] = event["status"]
                        break
                    if status < 500:  # a valid event refused: the test fails on it
                        self.refused[event["consent_id"]] = status
                        break
                    time.sleep(0.02)  # a 5xx: not acknowledged, retried


@pytest.mark.parametrize("backend", ["sqlite", "pg"])
def test_killed_api_loses_no_acknowledged_event(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    cluster: ReliabilityCluster | None = (
        request.getfixturevalue("rel_cluster") if backend == "pg" else None
    )
    kills = size(2, 10)
    with stack(backend, tmp_path, cluster, carrier=False) as dep:
        tenant = dep.create_tenant()
        phones = numbers("+4479112", 40)
        dep.start_serve()
        clients = [Client(i, dep.api_url, tenant, phones) for i in range(CLIENTS)]
        for c in clients:
            c.start()
        rng = random.Random(7)
        restarts: list[float] = []
        saved: list[Path] = []
        for k in range(kills):
            before = sum(len(c.acked) for c in clients)
            deadline = time.monotonic() + 15
            # Kill only once this server has acknowledged something, at a random moment.
            while sum(len(c.acked) for c in clients) < before + 20:
                assert time.monotonic() < deadline, "no acknowledgements after a restart"
                time.sleep(0.01)
            time.sleep(rng.uniform(0.05, 0.4))
            # A signed checkpoint handed out just before the crash: the ledger must extend it.
            with dep.api() as http:
                r = http.get("/v1/ledger/checkpoint")
            assert r.status_code == 200, r.text
            saved.append(tmp_path / f"before-kill-{k}.checkpoint")
            saved[-1].write_text(r.text)
            dep.procs[-1].kill9()
            down = time.monotonic()
            dep.start_serve()
            restarts.append(time.monotonic() - down)
        time.sleep(0.3)
        for c in clients:
            c.stop.set()
        for c in clients:
            c.join(timeout=20)
        dep.procs[-1].stop()

        acked: dict[str, str] = {}
        attempts = Counter[str]()
        refused: dict[str, int] = {}
        for c in clients:
            refused.update(c.refused)
            acked.update(c.acked)
            attempts.update(c.attempts)
        engine = create_engine(dep.env["CONSENTGATE_DATABASE_URL"])
        try:
            with engine.connect() as conn:
                leaves = conn.execute(
                    text(
                        "SELECT seq, subject_ref, consent_type, status, ts_us, consent_id "
                        "FROM ledger_entries WHERE tenant_id = :t ORDER BY seq"
                    ),
                    {"t": tenant["tenant"]},
                ).all()
                states = conn.execute(
                    text(
                        "SELECT subject_ref, consent_type, status, effective_us, event_seq, "
                        "consent_id FROM consent_state WHERE tenant_id = :t"
                    ),
                    {"t": tenant["tenant"]},
                ).all()
        finally:
            engine.dispose()
        in_ledger = {row.consent_id: row.status for row in leaves}
        missing = [cid for cid in acked if cid not in in_ledger]
        wrong = [cid for cid, st in acked.items() if cid in in_ledger and in_ledger[cid] != st]
        assert [row.seq for row in leaves] == list(range(len(leaves)))  # no gap, no repeat

        replay = fold(
            (
                row.subject_ref,
                row.consent_type,
                StateEntry(
                    ConsentStatus(row.status),
                    from_micros(int(row.ts_us)),
                    int(row.seq),
                    row.consent_id,
                ),
            )
            for row in leaves
        )
        view = {
            (row.subject_ref, row.consent_type): (
                row.status,
                int(row.effective_us),
                int(row.event_seq),
                row.consent_id,
            )
            for row in states
        }
        replayed = {
            key: (e.status.value, to_micros(e.effective_at), e.event_seq, e.consent_id)
            for key, e in replay.items()
        }
        extends = [a for path in saved for a in ("--against-checkpoint", str(path))]
        verify = dep.cli("ledger", "verify", "--tenant", tenant["tenant"], *extends, check=False)
        sizes = [int(path.read_text().split("\n")[1]) for path in saved]
        errors = {k: v for k, v in attempts.items() if not k.startswith("2")}
        line = report(
            f"kill -9 API x{kills} ({backend}): {len(acked)} events acknowledged, "
            f"{len(missing)} of them missing from the ledger, {len(wrong)} with other content; "
            f"ledger holds {len(leaves)} leaves; state view {len(view)} rows, replay "
            f"{len(replayed)} rows, {sum(view.get(k) != v for k, v in replayed.items())} differ; "
            f"ledger verify exit {verify.exit_code}, extending the checkpoints of tree sizes "
            f"{sizes} handed out before each kill; unanswered attempts {errors}; "
            f"restarts took {', '.join(f'{r:.1f}' for r in restarts)} s"
        )
        assert not refused, refused
        assert len(acked) > 20 * kills, line
        assert not missing and not wrong, line
        assert view == replayed, line
        assert verify.exit_code == 0, verify.output
        assert len(leaves) >= len(acked), line
