"""The sandbox carrier stamps every message it accepts with ``received_at`` (RCS through the
lean front and through FastAPI, SMS, push), and ``GET /messages`` returns it in RFC 3339 UTC
with six fractional digits, so a test can order deliveries against acknowledgements. The
stamps come from the same wall clock as the client's, so each falls between the instants
the client read just before sending and just after the answer."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from consentgate.delivery.providers import OutboundMessage, PushProvider, RbmProvider, SmsProvider
from consentgate.sandbox import create_sandbox
from consentgate.sandbox.fastpath import RbmFastPath
from tests.integration.test_sandbox_providers import Served

RBM_SECRET = "rbm-" + uuid.uuid4().hex
TWILIO_TOKEN = "twilio-" + uuid.uuid4().hex
PHONE = "+447911100001"
ENVELOPE = {"v": 1, "suite": "X25519-SHA256-CHACHA20POLY1305", "ct": "c2VhbGVk"}
STAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


@pytest.fixture(params=["lean", "fastapi"])
def carrier(request: pytest.FixtureRequest) -> Iterator[str]:
    sandbox = create_sandbox(None, RBM_SECRET, TWILIO_TOKEN)
    app: Any = RbmFastPath(sandbox) if request.param == "lean" else sandbox
    with Served(app) as served:
        yield served.url


def _send(http: httpx.Client, base: str, channel: str) -> None:
    message_id = str(uuid.uuid4())
    if channel == "rcs":
        RbmProvider(http, base_url=f"{base}/rbm", client_token=RBM_SECRET, access_token="t").send(
            OutboundMessage(message_id, PHONE, "rcs", text="hello")
        )
    elif channel == "sms":
        SmsProvider(
            http,
            base_url=f"{base}/twilio",
            account_sid="AC" + "0" * 32,
            auth_token=TWILIO_TOKEN,
            from_number="+447911200001",
        ).send(OutboundMessage(message_id, PHONE, "sms", text="hello"))
    else:
        PushProvider(http, base_url=f"{base}/push").send(
            OutboundMessage(
                message_id, PHONE, "push", text="hi", envelope=ENVELOPE, device_kid="kid-1"
            )
        )


def test_every_channel_is_stamped_with_microseconds(carrier: str) -> None:
    with httpx.Client(timeout=5) as http:
        devices = [{"phone": PHONE, "rcs": True, "native_e2ee": False}]
        assert http.put(f"{carrier}/devices", json={"devices": devices}).status_code == 200
        windows: dict[str, tuple[datetime, datetime]] = {}
        for channel in ("rcs", "sms", "push", "rcs"):
            before = datetime.now(UTC)
            _send(http, carrier, channel)
            windows[f"{channel}-{len(windows)}"] = (before, datetime.now(UTC))
        got = http.get(f"{carrier}/messages").json()["messages"]
    assert [m["channel"] for m in got] == ["rcs", "sms", "push", "rcs"]
    stamps = []
    for message, (before, after) in zip(got, windows.values(), strict=True):
        assert STAMP.match(message["received_at"]), message["received_at"]
        at = datetime.fromisoformat(message["received_at"].replace("Z", "+00:00"))
        assert before <= at <= after
        stamps.append(at)
    assert stamps == sorted(stamps)
