"""PostgreSQL stopped in the middle of a campaign (``pg_ctl stop -m immediate``, or ``-m
fast`` in the full form as well): nothing is sent while it is down (the carrier's count does
not move once the sends already checked before the stop have landed), a message asked for
during the outage is not sent, and when the server is back the campaign resumes and
completes: every eligible recipient exactly one message, no ineligible one any.

Sends whose consent was read before the stop may still land just after it (a batch's sends
are in flight until its lease deadline, 0.75 x the lease): the count is taken once that
grace has passed and compared at the end of the outage.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.reliability.procs import (
    PURPOSE,
    ReliabilityCluster,
    exactly_once,
    full,
    mixed_audience,
    report,
    size,
    stack,
    wait_for,
)

LEASE = 2.0
WORKERS = 2


def _modes() -> list[str]:
    return ["immediate", "fast"] if full() else ["immediate"]


@pytest.mark.parametrize("mode", _modes())
def test_campaign_fails_closed_while_postgresql_is_down_and_completes_after(
    mode: str, tmp_path: Path, rel_cluster: ReliabilityCluster
) -> None:
    granted, other, outage = size(200, 2000), size(30, 300), size(2, 6)
    settings = {
        "CONSENTGATE_DISPATCH_LEASE_SECONDS": str(LEASE),
        "CONSENTGATE_DISPATCH_BATCH": "20",
        "CONSENTGATE_PROVIDER_RATE_RBM": str(size(40, 150)),
    }
    with stack("pg", tmp_path, rel_cluster, **settings) as dep:
        dep.create_tenant()
        dep.start_serve("--no-workers")
        for i in range(WORKERS):
            dep.start_worker(f"worker-{i}")
        with dep.api() as http:
            aud = mixed_audience(dep, http, granted, other)
            r = http.post("/v1/templates", json={"name": "one", "text": "Your order shipped."})
            single_template = r.json()["template_id"]
            cid = dep.campaign(http, aud.everyone)
            assert http.post(f"/v1/campaigns/{cid}/send").status_code == 200
            wait_for("the first deliveries", lambda: len(dep.received()) >= granted // 5, 60)
            at_stop = len(dep.received())
            rel_cluster.stop(mode)
            try:
                time.sleep(LEASE)  # sends checked before the stop land
                settled = len(dep.received())
                single = _single_send(http, aud.granted[-1], single_template)
                time.sleep(outage)
                at_restart = len(dep.received())
                down_workers = [p.name for p in dep.procs if not p.alive()]
            finally:
                rel_cluster.start()
            status = dep.wait_done(http, cid, size(120, 600))
        received = dep.received()
    once, none, many, wrong = exactly_once(received, aud)
    line = report(
        f"PostgreSQL stopped (-m {mode}) mid-campaign for {LEASE + outage:.0f} s: carrier "
        f"held {at_stop} at the stop, {settled} once sends checked before it landed, "
        f"{at_restart} at the restart ({at_restart - settled} sent while down); a single "
        f"message asked for while down: {single}; processes that died: {down_workers or 'none'}; "
        f"after the restart the campaign finished: {len(aud.granted)} eligible, {once} "
        f"received exactly one, {none} none, {many} more than one; ineligible received "
        f"{wrong}; campaign sent {status['sent']}, skipped {status['skipped']}"
    )
    assert at_restart == settled, line
    assert not single.startswith(("sent", "fallback")), line
    assert not down_workers, line
    assert once == len(aud.granted) and none == many == wrong == 0, line
    assert at_stop < len(aud.granted), line  # the stop did fall mid-campaign


def _single_send(http: httpx.Client, number: str, template_id: str) -> str:
    """``POST /v1/messages`` to a consented number while the store is down: what came back."""
    try:
        r = http.post(
            "/v1/messages",
            json={
                "to": number,
                "consent_type": PURPOSE,
                "template_id": template_id,
                "variables": {},
                "idempotency_key": "during-outage",
            },
        )
    except httpx.TransportError as exc:
        return f"no answer ({type(exc).__name__})"
    if r.status_code == 200:
        d = r.json()["decision"]
        return f"{d['action']} ({d['reason']})"
    return f"HTTP {r.status_code} {r.json().get('type', '') if r.content else ''}".strip()
