"""A campaign through the real server and the sandbox carrier: streamed audience, set-based
pre-filter, background dispatch with a re-check, and a withdrawal racing the dispatch."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from tests.e2e.conftest import Server

GRANTED = [f"+4479111{i:05d}" for i in range(40)]
UNKNOWN = [f"+4479112{i:05d}" for i in range(10)]
WITHDRAWN = [f"+4474001{i:05d}" for i in range(5)]


def _events(phones: list[str], status: str, day: int) -> list[dict[str, str]]:
    return [
        {
            # A CMP's own id: never derived from the number (that would put it on disk).
            "consent_id": f"cmp-{status}-{day}-{(GRANTED + UNKNOWN + WITHDRAWN).index(p)}",
            "phone": p,
            "consent_type": "marketing_rcs",
            "status": status,
            "timestamp": f"2026-11-{day:02d}T10:00:00Z",
        }
        for p in phones
    ]


def test_campaign_end_to_end(server: Server) -> None:
    acme = server.create_tenant("acme")
    sandbox = httpx.Client(base_url=f"{server.url}/sandbox", timeout=10)
    sandbox.put(
        "/devices",
        json={
            "devices": [
                {"phone": p, "rcs": True, "native_e2ee": i % 2 == 0}
                for i, p in enumerate(GRANTED[:20])
            ]
        },
    ).raise_for_status()
    with server.client(acme["api_key"]) as http:
        events = _events(GRANTED + WITHDRAWN, "granted", 1) + _events(WITHDRAWN, "withdrawn", 2)
        assert http.post("/v1/consent-events", json={"events": events}).status_code == 201
        template = http.post(
            "/v1/templates", json={"name": "sale", "text": "Our sale starts now"}
        ).json()["template_id"]
        campaign = http.post(
            "/v1/campaigns", json={"template_id": template, "consent_type": "marketing_rcs"}
        )
        assert campaign.status_code == 201, campaign.text
        cid = campaign.json()["campaign_id"]

        def body() -> Iterator[bytes]:
            yield b"name,phone\n"
            for p in GRANTED + UNKNOWN + WITHDRAWN:
                yield f"someone,{p}\n".encode()
            yield b"broken,+44 12\n"

        upload = http.put(
            f"/v1/campaigns/{cid}/audience", content=body(), headers={"content-type": "text/csv"}
        )
        assert upload.status_code == 200, upload.text
        assert upload.json()["accepted"] == 55 and upload.json()["invalid"] == 1
        assert "+44 12" not in upload.text

        sent = http.post(f"/v1/campaigns/{cid}/send")
        assert sent.status_code == 200, sent.text
        assert sent.json()["by_reason"] == {"no_consent": 10, "withdrawn": 5}
        victim = GRANTED[-1]
        late = http.post("/v1/consent-events", json=_events([victim], "withdrawn", 3)[0])
        assert late.status_code == 201
        acked = datetime.now().astimezone()

        deadline = time.monotonic() + 60
        status = {}
        while time.monotonic() < deadline:
            status = http.get(f"/v1/campaigns/{cid}").json()
            if status["status"] == "done":
                break
            time.sleep(0.1)
        assert status["status"] == "done", status
        assert status["sent"] + status["fallback"] + status["skipped"] == 55
        again = http.post(f"/v1/campaigns/{cid}/send")
        assert again.status_code == 409

    carried = sandbox.get("/messages").json()["messages"]
    recipients = [m.get("to") for m in carried]
    assert len(recipients) == len(set(recipients)) == status["sent"] + status["fallback"]
    assert not set(recipients) & set(UNKNOWN + WITHDRAWN)
    for m in carried:
        if m.get("to") == victim:  # only if it left before the withdrawal was acknowledged
            assert datetime.fromisoformat(m["received_at"].replace("Z", "+00:00")) < acked
    engine = sa.create_engine(server.env["CONSENTGATE_DATABASE_URL"])
    with engine.connect() as conn:
        left = conn.execute(
            sa.text(
                "SELECT count(*) FROM campaign_recipients "
                "WHERE sealed IS NOT NULL OR wrapped_key IS NOT NULL"
            )
        ).scalar_one()
    engine.dispose()
    assert left == 0  # every number erased once its message completed
    # No number of the audience, in any form we hold it, anywhere on disk or in the log.
    data_dir = Path(server.env["CONSENTGATE_DATA_DIR"])
    files = [p for p in data_dir.rglob("*") if p.is_file()] + [server.log]
    needles = {p.lstrip("+").encode() for p in GRANTED + UNKNOWN + WITHDRAWN}
    needles |= {("0" + p[3:]).encode() for p in GRANTED + UNKNOWN + WITHDRAWN}
    leaks = [(f.name, n) for f in files for n in needles if n in f.read_bytes()]
    assert leaks == []


def _wait(check: Callable[[], bool], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_withdrawal_revokes_undelivered_messages_over_http(server: Server) -> None:
    """Sent, not yet delivered: a withdrawal (by API, or a STOP reply through the carrier)
    revokes the RBM message at the carrier, which then never delivers it; the others are
    delivered as usual. Campaign sends and a single POST /v1/messages alike."""
    acme = server.create_tenant("acme")
    by_api, by_stop, kept, single = GRANTED[:4]
    sandbox = httpx.Client(base_url=f"{server.url}/sandbox", timeout=10)
    devices = [{"phone": p, "rcs": True, "native_e2ee": False} for p in GRANTED[:4]]
    sandbox.put("/devices", json={"devices": devices}).raise_for_status()
    with server.client(acme["api_key"]) as http:
        events = _events(GRANTED[:4], "granted", 1)
        assert http.post("/v1/consent-events", json={"events": events}).status_code == 201
        template = http.post(
            "/v1/templates", json={"name": "sale", "text": "Our sale starts now"}
        ).json()["template_id"]
        cid = http.post(
            "/v1/campaigns", json={"template_id": template, "consent_type": "marketing_rcs"}
        ).json()["campaign_id"]
        body = "phone\n" + "\n".join([by_api, by_stop, kept]) + "\n"
        upload = http.put(
            f"/v1/campaigns/{cid}/audience", content=body, headers={"content-type": "text/csv"}
        )
        assert upload.status_code == 200
        assert http.post(f"/v1/campaigns/{cid}/send").status_code == 200
        _wait(lambda: http.get(f"/v1/campaigns/{cid}").json()["status"] == "done")
        one = http.post(
            "/v1/messages",
            json={
                "to": single,
                "consent_type": "marketing_rcs",
                "template_id": template,
                "variables": {},
                "idempotency_key": "single-1",
            },
        )
        assert one.status_code == 200 and one.json()["decision"]["action"] == "fallback"

        def carried() -> dict[str, dict[str, Any]]:
            return {m["to"]: m for m in sandbox.get("/messages").json()["messages"]}

        assert {m["status"] for m in carried().values()} == {"accepted"}
        withdrawn = _events([by_api, single], "withdrawn", 2)
        assert http.post("/v1/consent-events", json={"events": withdrawn}).status_code == 201
        stop = sandbox.post("/inbound", json={"from": by_stop, "text": "STOP"})
        assert stop.status_code == 200, stop.text
        _wait(lambda: all(carried()[p]["status"] == "revoked" for p in (by_api, by_stop, single)))
        assert sandbox.post("/deliveries/flush").json()["delivered"] == 1  # only `kept`
        final = carried()
        assert final[kept]["status"] == "delivered"
        assert {final[p]["status"] for p in (by_api, by_stop, single)} == {"revoked"}
        for phone in (by_api, by_stop, single):
            message = http.get(f"/v1/messages/{final[phone]['provider_message_id']}").json()
            assert message["status"] == "revoked"
            assert [e["kind"] for e in message["events"]] == ["revoked"]
        kept_message = http.get(f"/v1/messages/{final[kept]['provider_message_id']}").json()
        assert kept_message["status"] == "delivered"
