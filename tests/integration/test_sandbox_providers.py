"""The provider adapters against the sandbox carrier, over real HTTP on loopback.

The sandbox runs mounted at ``/sandbox`` in a parent app (as consentgate mounts it) inside a
real uvicorn server on a background thread; a second small app plays consentgate's callback
endpoints. Callback signatures are also checked against independently computed values (and
Twilio's published example), so the adapters and the sandbox cannot agree on a wrong scheme.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from types import TracebackType
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request, Response

from consentgate.delivery.providers import (
    CallbackUnauthenticated,
    Capabilities,
    FakeProvider,
    OutboundMessage,
    ProviderRejected,
    ProviderUnavailable,
    PushProvider,
    RbmProvider,
    SmsProvider,
    rbm,
    sms,
)
from consentgate.sandbox import create_sandbox, redact_phone_numbers_in_access_log

RBM_SECRET = "rbm-client-token"
TWILIO_SID = "ACtest"
TWILIO_TOKEN = "twilio-auth-token"

NATIVE = "+447700900001"  # RCS with native E2EE
RCS = "+447700900002"  # RCS only
PLAIN = "+447700900003"  # not listed: no RCS
PHONES = (NATIVE, RCS, PLAIN)


class Served:
    """An ASGI app in a real uvicorn server on a free loopback port, in a thread."""

    def __init__(self, app: Any, *, access_log: bool = False) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        config = uvicorn.Config(
            app,
            log_config=None,
            log_level="info" if access_log else "warning",
            access_log=access_log,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def __enter__(self) -> Served:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()


class Receiver:
    """consentgate's side of the callbacks: records what arrives."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str], bytes]] = []
        self.app = FastAPI()

        @self.app.post("/{kind}")
        async def receive(kind: str, request: Request) -> Response:
            self.calls.append((kind, dict(request.headers), await request.body()))
            return Response("ok", status_code=500 if kind == "broken" else 200)


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[Receiver, str]]:
    recv = Receiver()
    with Served(recv.app) as served:
        yield recv, served.url


@pytest.fixture(scope="module")
def carrier(receiver: tuple[Receiver, str]) -> Iterator[tuple[FastAPI, str]]:
    """The sandbox mounted at /sandbox in a parent app, served; yields (parent, sandbox URL)."""
    _, recv_url = receiver
    with httpx.Client(timeout=5) as callbacks:
        parent = FastAPI()
        sandbox = create_sandbox(f"{recv_url}/rbm", RBM_SECRET, TWILIO_TOKEN, http=callbacks)
        parent.mount("/sandbox", sandbox)
        with Served(parent) as served:
            yield parent, f"{served.url}/sandbox"


@pytest.fixture(scope="module")
def base(carrier: tuple[FastAPI, str]) -> str:
    return carrier[1]


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5) as client:
        yield client


@pytest.fixture(autouse=True)
def _fresh(base: str, http: httpx.Client, receiver: tuple[Receiver, str]) -> Iterator[None]:
    devices = [
        {"phone": NATIVE, "rcs": True, "native_e2ee": True},
        {"phone": RCS, "rcs": True, "native_e2ee": False},
    ]
    assert http.put(f"{base}/devices", json={"devices": devices}).status_code == 200
    http.delete(f"{base}/messages")
    http.delete(f"{base}/faults")
    receiver[0].calls.clear()
    yield
    http.delete(f"{base}/faults")  # releases anything hanging on an injected timeout


def rbm_provider(base: str, http: httpx.Client, *, carry: bool = False) -> RbmProvider:
    return RbmProvider(
        http,
        base_url=f"{base}/rbm",
        client_token=RBM_SECRET,
        access_token="oauth-token",
        carry_envelope=carry,
    )


def sms_provider(
    base: str, http: httpx.Client, *, token: str = TWILIO_TOKEN, **kw: Any
) -> SmsProvider:
    return SmsProvider(
        http,
        base_url=f"{base}/twilio",
        account_sid=TWILIO_SID,
        auth_token=token,
        from_number="+447700900999",
        **kw,
    )


def messages(base: str, http: httpx.Client) -> list[dict[str, Any]]:
    body: dict[str, list[dict[str, Any]]] = http.get(f"{base}/messages").json()
    return body["messages"]


def rcs(to: str, **kw: Any) -> OutboundMessage:
    return OutboundMessage(message_id=str(uuid.uuid4()), to=to, channel="rcs", **kw)


ENVELOPE = {"v": 1, "suite": "X25519-SHA256-CHACHA20POLY1305", "ct": "c2VhbGVk"}


# --- capabilities ------------------------------------------------------------------------------


def test_capabilities_follow_the_device_population(base: str, http: httpx.Client) -> None:
    provider = rbm_provider(base, http)
    assert provider.capabilities(NATIVE) == Capabilities(rcs=True, native_e2ee=True)
    assert provider.capabilities(RCS) == Capabilities(rcs=True, native_e2ee=False)
    assert provider.capabilities(PLAIN) == Capabilities(rcs=False, native_e2ee=False)
    http.put(f"{base}/devices", json={"devices": []})  # replaces the population
    assert provider.capabilities(NATIVE) == Capabilities(rcs=False, native_e2ee=False)
    assert sms_provider(base, http).capabilities(NATIVE) == Capabilities(False, False)
    push = PushProvider(http, base_url=f"{base}/push")
    assert push.capabilities(NATIVE) == Capabilities(False, False)


def test_rbm_wire_format_of_capabilities(base: str, http: httpx.Client) -> None:
    answer = http.get(
        f"{base}/rbm/v1/phones/{NATIVE}/capabilities",
        params={"requestId": str(uuid.uuid4())},
        headers={"Authorization": "Bearer t"},
    )
    assert answer.status_code == 200
    assert {"RICHCARD_STANDALONE", rbm.E2EE_FEATURE} <= set(answer.json()["features"])
    missing = http.get(
        f"{base}/rbm/v1/phones/{PLAIN}/capabilities", headers={"Authorization": "Bearer t"}
    )
    assert missing.status_code == 404 and missing.json()["error"]["status"] == "NOT_FOUND"
    unauthenticated = http.get(f"{base}/rbm/v1/phones/{NATIVE}/capabilities")
    assert unauthenticated.status_code == 401


def test_rbm_batch_capabilities_agree_with_the_per_number_check(
    base: str, http: httpx.Client
) -> None:
    """``users:batchGet`` (one request for many numbers) gives what one check per number
    gives; without the sandbox's E2EE list (real RBM), nobody has native E2EE."""
    provider = rbm_provider(base, http)
    batch = provider.capabilities_many(list(PHONES))
    assert batch == {p: provider.capabilities(p) for p in PHONES}
    assert batch[NATIVE] == Capabilities(True, True) and batch[PLAIN] == Capabilities(False, False)
    answer = http.post(
        f"{base}/rbm/v1/users:batchGet",
        json={"users": list(PHONES), "agentId": "a"},
        headers={"Authorization": "Bearer t"},
    )
    assert answer.status_code == 200
    assert sorted(answer.json()["reachableUsers"]) == sorted([NATIVE, RCS])
    unauthenticated = http.post(f"{base}/rbm/v1/users:batchGet", json={"users": [NATIVE]})
    assert unauthenticated.status_code == 401


def test_a_wrong_base_url_is_not_mistaken_for_no_rcs(base: str, http: httpx.Client) -> None:
    provider = RbmProvider(http, base_url=f"{base}/nope", client_token=RBM_SECRET)
    with pytest.raises(ProviderRejected) as caught:
        provider.capabilities(NATIVE)
    assert caught.value.provider_status == 404


# --- sending -----------------------------------------------------------------------------------


def test_rbm_send_carries_teaser_and_link_but_not_the_envelope(
    base: str, http: httpx.Client
) -> None:
    provider = rbm_provider(base, http)
    message = rcs(
        NATIVE, text="Your statement is ready", envelope=ENVELOPE, link="https://x.test/m/1"
    )
    receipt = provider.send(message)
    assert receipt.accepted and receipt.provider_message_id == message.message_id
    [got] = messages(base, http)
    assert got["to"] == NATIVE and got["channel"] == "rcs" and got["e2ee"] is True
    assert got["text"] == "Your statement is ready" and got["link"] == "https://x.test/m/1"
    assert got["envelope"] is None  # the real RBM path: the app fetches the envelope
    assert got["provider_message_id"] == message.message_id and got["status"] == "accepted"

    provider.send(rcs(RCS))  # no teaser given: the default one
    assert messages(base, http)[1]["text"] == rbm.DEFAULT_TEASER
    assert messages(base, http)[1]["e2ee"] is False


def test_rbm_send_with_envelope_carry_and_idempotent_retry(base: str, http: httpx.Client) -> None:
    provider = rbm_provider(base, http, carry=True)
    message = rcs(RCS, text="New message", envelope=ENVELOPE)
    assert provider.send(message).accepted
    assert provider.send(message).accepted  # a retry: 409 ALREADY_EXISTS counts as sent
    [got] = messages(base, http)
    assert got["envelope"] == ENVELOPE


def test_rbm_refuses_numbers_without_rcs_and_unmet_e2ee(base: str, http: httpx.Client) -> None:
    with pytest.raises(ProviderRejected) as caught:
        rbm_provider(base, http).send(rcs(PLAIN, text="hi"))
    assert caught.value.provider_status == 404 and PLAIN not in caught.value.detail
    with pytest.raises(ProviderRejected) as caught:
        rbm_provider(base, http, carry=True).send(rcs(RCS, text="hi", e2ee=True))
    assert caught.value.provider_status == 400 and "FAILED_PRECONDITION" in caught.value.detail
    rbm_provider(base, http, carry=True).send(rcs(NATIVE, text="hi", e2ee=True))
    assert [m["e2ee"] for m in messages(base, http)] == [True]


def test_sms_send(base: str, http: httpx.Client) -> None:
    provider = sms_provider(base, http)
    message = OutboundMessage(
        message_id="m-1",
        to=PLAIN,
        channel="sms",
        text="You have a new message.",
        link="https://x.test/s/2",
    )
    receipt = provider.send(message)
    assert receipt.accepted and receipt.provider_message_id.startswith("SM")
    [got] = messages(base, http)
    assert got["to"] == PLAIN and got["channel"] == "sms" and got["e2ee"] is False
    assert got["text"] == "You have a new message.\nhttps://x.test/s/2"
    assert got["link"] == "https://x.test/s/2" and got["envelope"] is None
    assert got["provider_message_id"] == receipt.provider_message_id

    with pytest.raises(ValueError, match="no envelope"):
        provider.send(OutboundMessage("m-2", PLAIN, "sms", text="x", envelope=ENVELOPE))
    with pytest.raises(ProviderRejected) as caught:
        sms_provider(base, http, token="wrong").send(message)
    assert (
        caught.value.provider_status == 401 and caught.value.detail == "sms: HTTP 401 error 20003"
    )


def test_twilio_wire_errors_do_not_echo_the_number(base: str, http: httpx.Client) -> None:
    answer = http.post(
        f"{base}/twilio/2010-04-01/Accounts/{TWILIO_SID}/Messages.json",
        data={"To": "+44 7700 900123", "From": "+447700900999", "Body": "hi"},
        auth=(TWILIO_SID, TWILIO_TOKEN),
    )
    assert answer.status_code == 400 and answer.json()["code"] == 21211
    assert "7700" not in answer.text


def test_push_send_and_revoke(base: str, http: httpx.Client) -> None:
    provider = PushProvider(http, base_url=f"{base}/push")
    message = OutboundMessage(
        "p-1", NATIVE, "push", text="New message", envelope=ENVELOPE, device_kid="kid-1"
    )
    assert provider.send(message).provider_message_id == "p-1"
    assert provider.send(message).accepted  # idempotent
    [got] = messages(base, http)
    assert got["channel"] == "push" and got["to"] is None and got["device_kid"] == "kid-1"
    assert got["envelope"] == ENVELOPE
    assert provider.revoke("p-1") is True
    assert provider.revoke("p-1") is False
    assert messages(base, http)[0]["status"] == "revoked"


# --- revocation and receipts -------------------------------------------------------------------


def test_rbm_revoke_before_and_after_delivery(base: str, http: httpx.Client) -> None:
    provider = rbm_provider(base, http)
    first, second = rcs(RCS, text="a"), rcs(RCS, text="b")
    provider.send(first)
    provider.send(second)
    assert provider.revoke(first.message_id, to=RCS) is True
    assert provider.revoke(first.message_id, to=RCS) is False
    with pytest.raises(ValueError, match="to="):
        provider.revoke(second.message_id)
    assert http.post(f"{base}/deliveries/flush").json()["delivered"] == 1
    assert provider.revoke(second.message_id, to=RCS) is False  # delivered: too late
    assert [m["status"] for m in messages(base, http)] == ["revoked", "delivered"]
    assert sms_provider(base, http).revoke("SM123") is False


def test_flush_sends_signed_receipts_in_both_formats(
    base: str, http: httpx.Client, receiver: tuple[Receiver, str]
) -> None:
    recv, recv_url = receiver
    rbm_p = rbm_provider(base, http)
    sms_p = sms_provider(base, http, status_callback=f"{recv_url}/sms")
    sent = rcs(NATIVE, text="hi")
    rbm_p.send(sent)
    sms_id = sms_p.send(OutboundMessage("s-1", PLAIN, "sms", text="hello")).provider_message_id

    flushed = http.post(f"{base}/deliveries/flush", params={"read": "true"}).json()
    assert flushed == {"delivered": 2, "callbacks_sent": 4, "callbacks_failed": 0}
    events = []
    for kind, headers, body in recv.calls:
        provider = rbm_p if kind == "rbm" else sms_p
        events += [
            (kind, e.kind, e.provider_message_id) for e in provider.parse_callback(headers, body)
        ]
    assert sorted(events) == sorted(
        [
            ("rbm", "delivered", sent.message_id),
            ("rbm", "read", sent.message_id),
            ("sms", "delivered", sms_id),
            ("sms", "read", sms_id),
        ]
    )
    assert {m["status"] for m in messages(base, http)} == {"read"}


# --- faults ------------------------------------------------------------------------------------


def test_injected_errors_map_to_retry_or_not(base: str, http: httpx.Client) -> None:
    http.post(f"{base}/faults", json={"error_rate": 1, "status": 503})
    with pytest.raises(ProviderUnavailable) as unavailable:
        rbm_provider(base, http).send(rcs(RCS, text="x"))
    assert (
        unavailable.value.detail == "rbm: HTTP 503 UNAVAILABLE" and not unavailable.value.maybe_sent
    )
    with pytest.raises(ProviderUnavailable):
        rbm_provider(base, http).capabilities(RCS)
    with pytest.raises(ProviderUnavailable):
        sms_provider(base, http).send(OutboundMessage("s", PLAIN, "sms", text="x"))

    http.post(f"{base}/faults", json={"error_rate": 1, "status": 400})
    with pytest.raises(ProviderRejected):
        rbm_provider(base, http).send(rcs(RCS, text="x"))
    with pytest.raises(ProviderRejected):
        sms_provider(base, http).send(OutboundMessage("s", PLAIN, "sms", text="x"))

    http.post(f"{base}/faults", json={"error_rate": 1, "status": 429})
    with pytest.raises(ProviderUnavailable):  # rate limited: worth a retry
        rbm_provider(base, http).send(rcs(RCS, text="x"))
    assert messages(base, http) == []


def test_injected_timeout_and_latency(base: str, http: httpx.Client) -> None:
    http.post(f"{base}/faults", json={"timeout_rate": 1, "hang_ms": 10_000})
    with httpx.Client(timeout=0.3) as impatient:
        started = time.monotonic()
        with pytest.raises(ProviderUnavailable) as caught:
            rbm_provider(base, impatient).send(rcs(RCS, text="x"))
        assert time.monotonic() - started < 2
    assert caught.value.maybe_sent and "timed out" in caught.value.detail

    http.post(f"{base}/faults", json={"latency_ms": 200})
    started = time.monotonic()
    assert rbm_provider(base, http).capabilities(RCS).rcs
    assert time.monotonic() - started >= 0.2


def test_seeded_faults_repeat(base: str, http: httpx.Client) -> None:
    provider = rbm_provider(base, http)

    def outcomes() -> list[bool]:
        http.post(f"{base}/faults", json={"error_rate": 0.5, "seed": 7})
        result = []
        for _ in range(16):
            try:
                provider.capabilities(RCS)
                result.append(True)
            except ProviderUnavailable:
                result.append(False)
        return result

    first = outcomes()
    assert first == outcomes() and True in first and False in first


# --- callbacks ---------------------------------------------------------------------------------


def rbm_callback(event: dict[str, Any], token: str = RBM_SECRET) -> tuple[dict[str, str], bytes]:
    """A callback built from the RBM docs, independently of the adapter's helpers."""
    data = json.dumps(event).encode()
    signature = base64.b64encode(hmac.new(token.encode(), data, hashlib.sha512).digest()).decode()
    body = {
        "message": {"data": base64.b64encode(data).decode(), "messageId": "1", "publishTime": "x"},
        "subscription": "projects/p/subscriptions/s",
    }
    return {"x-goog-signature": signature}, json.dumps(body).encode()


def test_rbm_callbacks_parse_when_signed(base: str, http: httpx.Client) -> None:
    provider = rbm_provider(base, http)
    common = {
        "senderPhoneNumber": RCS,
        "agentId": "a",
        "sendTime": "2026-11-27T10:00:00.123456789Z",
    }
    delivered = {**common, "eventType": "DELIVERED", "eventId": "e1", "messageId": "m1"}
    [event] = provider.parse_callback(*rbm_callback(delivered))
    assert (event.kind, event.provider_message_id, event.from_phone) == ("delivered", "m1", None)
    assert event.at.isoformat() == "2026-11-27T10:00:00.123456+00:00"
    [read] = provider.parse_callback(*rbm_callback({**delivered, "eventType": "READ"}))
    assert read.kind == "read"
    [stop] = provider.parse_callback(
        *rbm_callback({**common, "eventType": "UNSUBSCRIBE", "eventId": "e"})
    )
    assert (stop.kind, stop.from_phone) == ("unsubscribe", RCS)
    [reply] = provider.parse_callback(*rbm_callback({**common, "messageId": "u1", "text": "STOP"}))
    assert (reply.kind, reply.from_phone, reply.text) == ("inbound", RCS, "STOP")
    assert provider.parse_callback(*rbm_callback({**common, "eventType": "IS_TYPING"})) == []
    assert RCS not in repr(reply)


def test_rbm_callbacks_refused_when_not_signed_right(base: str, http: httpx.Client) -> None:
    provider = rbm_provider(base, http)
    event = {"senderPhoneNumber": RCS, "eventType": "DELIVERED", "messageId": "m1"}
    headers, body = rbm_callback(event, token="someone-else")
    with pytest.raises(CallbackUnauthenticated):
        provider.parse_callback(headers, body)
    good_headers, good_body = rbm_callback(event)
    with pytest.raises(CallbackUnauthenticated):
        provider.parse_callback({}, good_body)
    tampered = json.loads(good_body)
    tampered["message"]["data"] = base64.b64encode(
        json.dumps({**event, "messageId": "m2"}).encode()
    ).decode()
    with pytest.raises(CallbackUnauthenticated):
        provider.parse_callback(good_headers, json.dumps(tampered).encode())
    with pytest.raises(CallbackUnauthenticated):
        provider.parse_callback(good_headers, b"not json")


def test_rbm_webhook_verification_handshake() -> None:
    body = json.dumps({"clientToken": RBM_SECRET, "secret": "1234567890"}).encode()
    assert rbm.webhook_verification_secret(body, RBM_SECRET) == "1234567890"
    assert rbm.webhook_verification_secret(body, "other") is None


def test_twilio_signature_matches_the_published_example() -> None:
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+12349013030",
        "Digits": "1234",
        "From": "+12349013030",
        "To": "+18005551212",
    }
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    assert sms.signature("12345", url, params.items()) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="


def twilio_callback(
    url: str, params: dict[str, str], token: str = TWILIO_TOKEN
) -> tuple[dict[str, str], bytes]:
    payload = url + "".join(k + params[k] for k in sorted(params))
    signature = base64.b64encode(hmac.new(token.encode(), payload.encode(), hashlib.sha1).digest())
    return {"X-Twilio-Signature": signature.decode()}, urlencode(params).encode()


def test_sms_callbacks(base: str, http: httpx.Client) -> None:
    url = "https://consentgate.test/v1/providers/sms/callbacks"
    provider = sms_provider(base, http, status_callback=url)
    status = {"MessageSid": "SM1", "MessageStatus": "delivered", "AccountSid": TWILIO_SID}
    [delivered] = provider.parse_callback(*twilio_callback(url, status))
    assert (delivered.kind, delivered.provider_message_id) == ("delivered", "SM1")
    [failed] = provider.parse_callback(
        *twilio_callback(url, {**status, "MessageStatus": "undelivered"})
    )
    assert failed.kind == "failed"
    assert provider.parse_callback(*twilio_callback(url, {**status, "MessageStatus": "sent"})) == []
    inbound = {"MessageSid": "SM2", "From": PLAIN, "To": "+447700900999", "Body": "Hello there"}
    [reply] = provider.parse_callback(*twilio_callback(url, inbound))
    assert (reply.kind, reply.from_phone, reply.text) == ("inbound", PLAIN, "Hello there")
    [stop] = provider.parse_callback(
        *twilio_callback(url, {**inbound, "Body": "STOP", "OptOutType": "STOP"})
    )
    assert (stop.kind, stop.from_phone) == ("unsubscribe", PLAIN)

    with pytest.raises(CallbackUnauthenticated):
        provider.parse_callback(*twilio_callback(url, status, token="wrong"))
    with pytest.raises(CallbackUnauthenticated):  # signed for another URL
        provider.parse_callback(*twilio_callback(url + "?x=1", status))
    headers, body = twilio_callback(url, status)
    with pytest.raises(CallbackUnauthenticated):
        provider.parse_callback(headers, body.replace(b"delivered", b"failed"))
    with pytest.raises(CallbackUnauthenticated):
        provider.parse_callback({}, body)
    with pytest.raises(CallbackUnauthenticated):
        PushProvider(http, base_url=base).parse_callback(headers, body)


def test_inbound_reaches_consentgate_signed(
    base: str, http: httpx.Client, receiver: tuple[Receiver, str]
) -> None:
    recv, _ = receiver
    answer = http.post(f"{base}/inbound", json={"from": RCS, "text": "STOP"})
    assert answer.status_code == 200 and answer.json() == {"callback_status": 200}
    [(kind, headers, body)] = recv.calls
    assert kind == "rbm"
    data = base64.b64decode(json.loads(body)["message"]["data"])
    expected = base64.b64encode(hmac.new(RBM_SECRET.encode(), data, hashlib.sha512).digest())
    assert headers["x-goog-signature"] == expected.decode()
    [event] = rbm_provider(base, http).parse_callback(headers, body)
    assert (event.kind, event.from_phone, event.text) == ("inbound", RCS, "STOP")

    http.post(f"{base}/inbound", json={"from": RCS, "event": "UNSUBSCRIBE"})
    [event] = rbm_provider(base, http).parse_callback(recv.calls[1][1], recv.calls[1][2])
    assert (event.kind, event.from_phone) == ("unsubscribe", RCS)


# --- the sandbox's own surface -----------------------------------------------------------------


def test_control_routes_answer_problems_without_echoing_numbers(
    base: str, http: httpx.Client
) -> None:
    bad = http.put(f"{base}/devices", json={"devices": [{"phone": "07700 900123", "rcs": True}]})
    assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"
    assert bad.json()["field"] == "devices[0].phone" and "900123" not in bad.text
    odd = http.put(
        f"{base}/devices", json={"devices": [{"phone": RCS, "rcs": False, "native_e2ee": True}]}
    )
    assert odd.status_code == 422
    assert http.post(f"{base}/faults", json={"error_rate": 2}).status_code == 422
    assert http.post(f"{base}/inbound", json={"from": RCS}).status_code == 422
    assert http.get(f"{base}/nowhere").json()["type"] == "/problems/not-found"


def test_no_phone_number_reaches_the_logs(
    carrier: tuple[FastAPI, str],
    http: httpx.Client,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parent, _ = carrier
    redact_phone_numbers_in_access_log()
    # Servers started with access_log=False turn the logger's propagation off, process-wide.
    monkeypatch.setattr(logging.getLogger("uvicorn.access"), "propagate", True)
    caplog.set_level(logging.DEBUG)
    with Served(parent, access_log=True) as served:
        base = f"{served.url}/sandbox"
        provider = rbm_provider(base, http)
        provider.capabilities(NATIVE)
        provider.send(rcs(RCS, text="hi"))
        http.post(f"{base}/faults", json={"error_rate": 1})
        with pytest.raises(ProviderUnavailable):
            provider.capabilities(NATIVE)
        http.delete(f"{base}/faults")
        time.sleep(0.1)  # the access log line is written after the response
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "/phones/<redacted>/capabilities" in logged  # the access log did run
    for phone in PHONES:
        assert phone not in logged and phone.lstrip("+") not in logged


def test_auto_receipts_and_failing_callback_targets(
    http: httpx.Client, receiver: tuple[Receiver, str]
) -> None:
    recv, recv_url = receiver
    with httpx.Client(timeout=5) as callbacks:
        auto = create_sandbox(
            f"{recv_url}/rbm", RBM_SECRET, TWILIO_TOKEN, http=callbacks, auto_receipts=True
        )
        broken = create_sandbox(f"{recv_url}/broken", RBM_SECRET, TWILIO_TOKEN, http=callbacks)
        nowhere = create_sandbox("http://127.0.0.1:9/rbm", RBM_SECRET, TWILIO_TOKEN, http=callbacks)
        silent = create_sandbox(None, RBM_SECRET, TWILIO_TOKEN)
        with Served(auto) as a, Served(broken) as b, Served(nowhere) as n, Served(silent) as s:
            http.put(f"{a.url}/devices", json={"devices": [{"phone": RCS, "rcs": True}]})
            sent = rcs(RCS, text="hi")
            rbm_provider(a.url, http).send(sent)
            deadline = time.monotonic() + 5
            while not recv.calls and time.monotonic() < deadline:
                time.sleep(0.02)
            [(_, headers, body)] = recv.calls
            [event] = rbm_provider(a.url, http).parse_callback(headers, body)
            assert (event.kind, event.provider_message_id) == ("delivered", sent.message_id)
            assert messages(a.url, http)[0]["status"] == "delivered"

            inbound = {"from": RCS, "text": "hello"}
            failed = http.post(f"{b.url}/inbound", json=inbound)
            assert failed.status_code == 502 and failed.json()["callback_status"] == 500
            unreachable = http.post(f"{n.url}/inbound", json=inbound)
            assert unreachable.status_code == 502 and unreachable.json()["callback_status"] is None
            assert http.post(f"{s.url}/inbound", json=inbound).status_code == 409


def test_the_fake_provider_keeps_the_contract() -> None:
    fake = FakeProvider(numbers={RCS: Capabilities(rcs=True, native_e2ee=False)})
    assert fake.capabilities(RCS).rcs and not fake.capabilities(PLAIN).rcs
    fake.failures.append(ProviderUnavailable("fake: down"))
    with pytest.raises(ProviderUnavailable):
        fake.send(rcs(RCS))
    message = rcs(RCS, text="hi")
    assert fake.send(message) == fake.send(message)
    assert len(fake.sent) == 1 and fake.revoke(message.message_id) is True
    fake.deliver(message.message_id)
    assert fake.revoke(message.message_id) is False
    body = json.dumps([{"kind": "inbound", "from_phone": RCS, "text": "STOP"}]).encode()
    [event] = fake.parse_callback({"X-Fake-Secret": fake.secret}, body)
    assert (event.kind, event.from_phone) == ("inbound", RCS)
    with pytest.raises(CallbackUnauthenticated):
        fake.parse_callback({}, body)
