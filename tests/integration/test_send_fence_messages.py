"""A single message (``POST /v1/messages``) holds its subject's send fence from before its
consent check until its decision is stored: while the carrier is slow to take it, a
withdrawal of that subject cannot be answered (its fence wait gives up at its bound), and
once the message is sent the fence is free again. Both engines, the sandbox carrier over
HTTP."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from consentgate.bootstrap import App
from consentgate.delivery.templates import Template
from consentgate.domain.clock import FixedClock
from consentgate.domain.identity import normalise_phone
from consentgate.gate.fence import SendFence
from consentgate.sandbox import create_sandbox
from consentgate.sandbox.fastpath import RbmFastPath
from consentgate.storage.engine import read_tx
from tests.integration.test_dispatch import (
    PURPOSE,
    RBM_TOKEN,
    TWILIO_TOKEN,
    _app,
    _consent,
    _devices,
)
from tests.integration.test_sandbox_providers import Served

PHONE = "+447911100123"


@pytest.fixture
def served(env: dict[str, str], clock: FixedClock) -> Iterator[tuple[App, str]]:
    """An App whose sandbox carrier runs on its own loopback server."""
    with Served(RbmFastPath(create_sandbox(None, RBM_TOKEN, TWILIO_TOKEN))) as carrier:
        built = _app(env, carrier.url, clock)
        built.tenants.create("acme", "GB")
        yield built, carrier.url
        built.close()


def test_a_single_send_holds_its_subjects_fence_until_it_is_over(
    served: tuple[App, str], clock: FixedClock
) -> None:
    app, carrier = served
    _devices(carrier, [PHONE])
    _consent(app, [PHONE], "granted", clock, "g")
    template = app.registry.create_template(
        "acme", Template(str(uuid.uuid4()), "note", "Your order shipped", None, False)
    )
    to = normalise_phone(PHONE, "GB")
    version = max(app.keystore.salt_versions("acme"))
    hashed = app.keystore.keyed_hash("acme", version, to.value.encode())
    with read_tx(app.engine) as conn:
        ref = app.links.known_hashed(conn, "acme", [hashed.hex()])[hashed.hex()]
    probe = SendFence(app.engine, wait=timedelta(milliseconds=20))
    httpx.post(f"{carrier}/faults", json={"latency_ms": 1500}).raise_for_status()
    answer: dict[str, Any] = {}

    def send() -> None:
        answer.update(app.messages.send("acme", to, PURPOSE, template, {}, "one-1"))

    sender = threading.Thread(target=send)
    sender.start()
    deadline = time.monotonic() + 30
    # Until the sender holds the fence, a withdrawal's wait passes at once.
    while probe.wait_for_sends("acme", [(ref, PURPOSE)]):
        assert sender.is_alive(), f"sent without ever holding the fence: {answer}"
        assert time.monotonic() < deadline
    held_while_sending = not answer  # the fence was seen held before the send returned
    sender.join(timeout=30)
    httpx.delete(f"{carrier}/faults").raise_for_status()
    assert held_while_sending
    assert answer["decision"]["action"] == "sent", answer
    assert probe.wait_for_sends("acme", [(ref, PURPOSE)])  # released with the send
    probe.close()
