"""kill -9 the server mid-campaign, start another on the same store: every eligible
recipient gets exactly one message. The carrier (sandbox) runs in its own server here, so it
outlives the killed process and counts what really arrived."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from consentgate.sandbox import create_sandbox
from tests import pg
from tests.e2e.conftest import Server, _start

PHONES = [f"+4479111{i:05d}" for i in range(120)]


@pytest.fixture
def carrier() -> Iterator[tuple[str, dict[str, str]]]:
    secrets = {"rbm": "rbm-test-token-" + os.urandom(8).hex(), "twilio": os.urandom(8).hex()}
    port = pg.free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_sandbox(None, secrets["rbm"], secrets["twilio"]),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            timeout_graceful_shutdown=1,  # a keep-alive client must not hold the teardown
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", secrets
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_killed_worker_never_sends_twice(
    env: dict[str, str], tmp_path: Path, carrier: tuple[str, dict[str, str]]
) -> None:
    url, secrets = carrier
    full = {
        **os.environ,
        **env,
        "CONSENTGATE_SANDBOX_URL": url,
        "CONSENTGATE_SANDBOX_RBM_TOKEN": secrets["rbm"],
        "CONSENTGATE_SANDBOX_TWILIO_TOKEN": secrets["twilio"],
        "CONSENTGATE_DISPATCH_LEASE_SECONDS": "2",
        # Batches send concurrently: a rate limit keeps the campaign in flight at the kill
        # (the first batch is cut to what the limit lets through in a second, 100).
        "CONSENTGATE_PROVIDER_RATE_RBM": "100",
    }
    sandbox = httpx.Client(base_url=url, timeout=10)
    sandbox.put(
        "/devices",
        json={"devices": [{"phone": p, "rcs": True, "native_e2ee": True} for p in PHONES]},
    ).raise_for_status()
    sandbox.post("/faults", json={"latency_ms": 15}).raise_for_status()  # a campaign in flight
    first: Server = _start(full, tmp_path / "first.log")
    try:
        acme = first.create_tenant("acme")
        with first.client(acme["api_key"]) as http:
            events = [
                {
                    "consent_id": f"c{i}",
                    "phone": p,
                    "consent_type": "marketing_rcs",
                    "status": "granted",
                    "timestamp": "2026-11-01T10:00:00Z",
                }
                for i, p in enumerate(PHONES)
            ]
            assert http.post("/v1/consent-events", json={"events": events}).status_code == 201
            template = http.post("/v1/templates", json={"name": "t", "text": "Hello"}).json()
            cid = http.post(
                "/v1/campaigns",
                json={"template_id": template["template_id"], "consent_type": "marketing_rcs"},
            ).json()["campaign_id"]
            body = "phone\n" + "\n".join(PHONES) + "\n"
            assert (
                http.put(
                    f"/v1/campaigns/{cid}/audience",
                    content=body,
                    headers={"content-type": "text/csv"},
                ).status_code
                == 200
            )
            assert http.post(f"/v1/campaigns/{cid}/send").status_code == 200
        deadline = time.monotonic() + 60
        while len(sandbox.get("/messages").json()["messages"]) < 20:
            assert time.monotonic() < deadline, "dispatch never started"
            time.sleep(0.02)
    finally:
        os.kill(first.process.pid, signal.SIGKILL)  # mid-campaign, no goodbye
        first.process.wait(timeout=10)
    delivered_at_kill = len(sandbox.get("/messages").json()["messages"])
    assert delivered_at_kill < len(PHONES)
    second = _start(full, tmp_path / "second.log")
    try:
        with second.client(acme["api_key"]) as http:
            deadline = time.monotonic() + 120
            status = {}
            while time.monotonic() < deadline:
                status = http.get(f"/v1/campaigns/{cid}").json()
                if status["status"] == "done":
                    break
                time.sleep(0.2)
        assert status["status"] == "done", status
        assert status["sent"] == len(PHONES)
    finally:
        second.process.terminate()
        second.process.wait(timeout=10)
    received = [m["to"] for m in sandbox.get("/messages").json()["messages"]]
    print(
        f"killed after {delivered_at_kill} deliveries; {len(received)} received in all, "
        f"{len(set(received))} distinct recipients (expected {len(PHONES)})"
    )
    sandbox.close()
    assert sorted(received) == sorted(PHONES)  # everyone once, nobody twice
