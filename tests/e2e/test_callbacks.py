"""Provider callbacks over real HTTP: receipts move a message's status (never backwards),
STOP replies and RBM unsubscribes withdraw marketing consent through the ledger, forged or
replayed callbacks change nothing, and Twilio-format SMS status callbacks work too."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from consentgate.delivery.callbacks import is_stop_keyword, marketing_purposes
from consentgate.delivery.providers import rbm
from consentgate.domain.timeutil import format_rfc3339
from tests.e2e.conftest import Server

RBM_TOKEN = "rbm-client-token-for-tests"
TWILIO_TOKEN = "twilio-auth-token-for-tests"
ALICE, BOB, CAROL, DAVE, ERIN = (
    "+447911100001",
    "+447911100002",
    "+447911100003",
    "+447911100004",
    "+447911100005",
)
# The CMP's consent ids name the person by a label, never by the number (a consent_id is
# stored as given, in the append-only ledger).
LABELS = {ALICE: "alice", BOB: "bob", CAROL: "carol", DAVE: "dave", ERIN: "erin"}


@pytest.fixture
def env(env: dict[str, str]) -> dict[str, str]:
    """Known sandbox credentials, so a test can sign (and forge) callbacks itself."""
    return {
        **env,
        "CONSENTGATE_SANDBOX_RBM_TOKEN": RBM_TOKEN,
        "CONSENTGATE_SANDBOX_TWILIO_TOKEN": TWILIO_TOKEN,
    }


def _yesterday() -> str:
    return format_rfc3339(datetime.now(UTC).replace(microsecond=0) - timedelta(days=1))


def _grant(http: httpx.Client, phone: str, purpose: str = "marketing_rcs") -> None:
    r = http.post(
        "/v1/consent-events",
        json={
            "consent_id": f"{LABELS[phone]}-{purpose}",
            "phone": phone,
            "consent_type": purpose,
            "status": "granted",
            "timestamp": _yesterday(),
        },
    )
    assert r.status_code == 201, r.text


def _state(http: httpx.Client, phone: str) -> dict[str, Any]:
    r = http.post("/v1/consents/lookup", json={"phone": phone})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _history(http: httpx.Client, phone: str) -> list[dict[str, Any]]:
    hashed_id = _state(http, phone)["hashed_id"]
    r = http.get(f"/v1/subjects/{hashed_id}/history")
    assert r.status_code == 200, r.text
    events: list[dict[str, Any]] = r.json()["events"]
    return events


def _status(http: httpx.Client, phone: str, purpose: str = "marketing_rcs") -> str:
    return str(_state(http, phone)["consents"][purpose]["status"])


def _template(http: httpx.Client) -> str:
    r = http.post("/v1/templates", json={"name": "promo", "text": "Hello {{first_name}}"})
    assert r.status_code == 201, r.text
    return str(r.json()["template_id"])


def _send(
    http: httpx.Client, to: str, template: str, key: str, purpose: str = "marketing_rcs"
) -> dict[str, Any]:
    r = http.post(
        "/v1/messages",
        json={
            "to": to,
            "consent_type": purpose,
            "template_id": template,
            "variables": {"first_name": "Ada"},
            "idempotency_key": key,
        },
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _rbm_post(
    server: Server, event: dict[str, Any], *, token: str = RBM_TOKEN, body: bytes | None = None
) -> httpx.Response:
    """Post an RBM callback as RBM would (Pub/Sub envelope, X-Goog-Signature)."""
    raw, data = rbm.callback_body(event, publish_time=format_rfc3339(datetime.now(UTC)))
    return httpx.post(
        f"{server.url}/v1/providers/rbm/callbacks",
        content=body if body is not None else raw,
        headers={"Content-Type": "application/json", rbm.SIGNATURE_HEADER: rbm.sign(token, data)},
        timeout=10,
    )


def _user_message(phone: str, text: str) -> dict[str, Any]:
    return {
        "senderPhoneNumber": phone,
        "messageId": uuid.uuid4().hex,
        "sendTime": format_rfc3339(datetime.now(UTC)),
        "agentId": "test@rbm.goog",
        "text": text,
    }


def _assert_no_numbers_logged(server: Server) -> None:
    log = server.log.read_text()
    for phone in (ALICE, BOB, CAROL, DAVE, ERIN):
        assert phone not in log and phone[1:] not in log


def test_receipts_and_stop_keyword_across_tenants(server: Server) -> None:
    acme = server.create_tenant("acme")
    beta = server.create_tenant("beta")
    sandbox = httpx.Client(base_url=f"{server.url}/sandbox", timeout=10)
    sandbox.put(
        "/devices", json={"devices": [{"phone": ALICE, "rcs": True, "native_e2ee": True}]}
    ).raise_for_status()
    with server.client(acme["api_key"]) as http, server.client(beta["api_key"]) as other:
        _grant(http, ALICE)
        _grant(http, ALICE, "transactional_rcs")
        _grant(http, BOB)
        _grant(other, ALICE)
        template = _template(http)
        sent = _send(http, ALICE, template, "m1")
        assert sent["decision"]["action"] == "sent"
        message_id = sent["message_id"]
        first = http.get(f"/v1/messages/{message_id}").json()
        assert first["status"] == "sent" and first["events"] == []
        assert first["decision"] == sent["decision"]

        # Receipts: delivered then read, in one flush.
        flushed = sandbox.post("/deliveries/flush", params={"read": "true"}).json()
        assert flushed == {"delivered": 1, "callbacks_sent": 2, "callbacks_failed": 0}
        read = http.get(f"/v1/messages/{message_id}").json()
        assert read["status"] == "read"
        assert [e["kind"] for e in read["events"]] == ["delivered", "read"]
        # A late DELIVERED receipt is recorded but never moves the status backwards.
        late = {
            "senderPhoneNumber": ALICE,
            "eventType": "DELIVERED",
            "eventId": uuid.uuid4().hex,
            "messageId": sent["message_id"],
            "sendTime": format_rfc3339(datetime.now(UTC)),
        }
        assert _rbm_post(server, late).json() == {
            "events": 1,
            "linked": 1,
            "ignored": 0,
            "withdrawals": 0,
            "replayed": 0,
        }
        assert http.get(f"/v1/messages/{message_id}").json()["status"] == "read"
        unknown = {**late, "eventId": uuid.uuid4().hex, "messageId": str(uuid.uuid4())}
        assert _rbm_post(server, unknown).json()["ignored"] == 1
        # Messages are tenant-scoped.
        assert other.get(f"/v1/messages/{message_id}").status_code == 404
        assert http.get(f"/v1/messages/{uuid.uuid4()}").status_code == 404

        # A reply that is not a keyword changes nothing.
        before = len(_history(http, ALICE))
        thanks = sandbox.post("/inbound", json={"from": ALICE, "text": "thanks, stop by soon"})
        assert thanks.json() == {"callback_status": 200}
        assert len(_history(http, ALICE)) == before
        assert _status(http, ALICE) == "granted"

        # STOP (any case, padded): marketing withdrawn in every tenant that knows the number.
        stop = sandbox.post("/inbound", json={"from": ALICE, "text": "  stop "})
        assert stop.json() == {"callback_status": 200}
        assert _status(http, ALICE) == "withdrawn"
        assert _status(http, ALICE, "transactional_rcs") == "granted"
        assert _status(other, ALICE) == "withdrawn"
        assert _status(http, BOB) == "granted"
        added = _history(http, ALICE)[before:]
        assert [(e["consent_type"], e["status"], e["source"]) for e in added] == [
            ("marketing_rcs", "withdrawn", "inbound_keyword")
        ]
        assert added[0]["consent_id"].startswith("rbm:")

        # Revocation is immediate: the next marketing send is skipped, service messages go.
        after = _send(http, ALICE, template, "m2")
        assert after["decision"] == {"action": "skipped", "mode": None, "reason": "withdrawn"}
        service = _send(http, ALICE, template, "m3", "transactional_rcs")
        assert service["decision"]["action"] == "sent"

        # A number no tenant knows: acknowledged, ignored, no subject created.
        stranger = _rbm_post(server, _user_message(ERIN, "STOP"))
        assert stranger.status_code == 200 and stranger.json()["ignored"] == 1
        assert http.post("/v1/consents/lookup", json={"phone": ERIN}).status_code == 404
    _assert_no_numbers_logged(server)


def test_unsubscribe_replay_forgery_and_sms(server: Server) -> None:
    acme = server.create_tenant("acme")
    sandbox = httpx.Client(base_url=f"{server.url}/sandbox", timeout=10)
    with server.client(acme["api_key"]) as http:
        for phone in (BOB, CAROL, DAVE):
            _grant(http, phone)
        baseline = len(_history(http, BOB))

        # Forged, unsigned, malformed: 401/422 problems and nothing changes.
        forged = _rbm_post(server, _user_message(BOB, "STOP"), token="not-the-token")
        assert forged.status_code == 401
        assert forged.headers["content-type"].startswith("application/problem+json")
        raw, _ = rbm.callback_body(_user_message(BOB, "STOP"), publish_time="2026-01-01T00:00:00Z")
        unsigned = httpx.post(f"{server.url}/v1/providers/rbm/callbacks", content=raw)
        assert unsigned.status_code == 401
        bad_data = json.dumps({"message": {"data": "bm90IGpzb24="}}).encode()  # "not json"
        malformed = httpx.post(
            f"{server.url}/v1/providers/rbm/callbacks",
            content=bad_data,
            headers={rbm.SIGNATURE_HEADER: rbm.sign(RBM_TOKEN, b"not json")},
        )
        assert malformed.status_code == 422
        sms_forged = httpx.post(
            f"{server.url}/v1/providers/sms/callbacks",
            data={"From": BOB, "Body": "STOP", "MessageSid": "SM1"},
            headers={"X-Twilio-Signature": "AAAA"},
        )
        assert sms_forged.status_code == 401
        assert len(_history(http, BOB)) == baseline
        assert _status(http, BOB) == "granted"
        assert httpx.post(f"{server.url}/v1/providers/nope/callbacks").status_code == 404

        # RBM's webhook set-up handshake echoes the secret, only for the right client token.
        shake = httpx.post(
            f"{server.url}/v1/providers/rbm/callbacks",
            json={"clientToken": RBM_TOKEN, "secret": "s3cr3t"},
        )
        assert shake.status_code == 200 and shake.text == "s3cr3t"
        wrong = httpx.post(
            f"{server.url}/v1/providers/rbm/callbacks",
            json={"clientToken": "guess", "secret": "s3cr3t"},
        )
        assert wrong.status_code == 401

        # The same STOP delivered twice is one ledger event per marketing purpose.
        stop = _user_message(BOB, "Stop")
        once = _rbm_post(server, stop)
        again = _rbm_post(server, stop)  # a redelivery: new Pub/Sub envelope, same event
        assert once.json()["withdrawals"] == 1
        assert again.json()["withdrawals"] == 0 and again.json()["replayed"] == 1
        added = _history(http, BOB)[baseline:]
        assert [(e["status"], e["source"]) for e in added] == [("withdrawn", "inbound_keyword")]
        assert _status(http, BOB) == "withdrawn"

        # RBM's UNSUBSCRIBE event (no text) is a withdrawal too.
        unsubscribed = sandbox.post("/inbound", json={"from": CAROL, "event": "UNSUBSCRIBE"})
        assert unsubscribed.json() == {"callback_status": 200}
        assert _status(http, CAROL) == "withdrawn"
        assert _history(http, CAROL)[-1]["source"] == "inbound_keyword"

        # SMS: Twilio-format status callbacks (signed for the status callback URL).
        template = _template(http)
        sms = _send(http, DAVE, template, "sms-1")  # no RCS device: SMS fallback
        assert sms["decision"]["mode"] == "sms_redacted" and sms["status"] == "sent"
        sandbox.post("/deliveries/flush", params={"read": "true"}).raise_for_status()
        read = http.get(f"/v1/messages/{sms['message_id']}").json()
        assert read["status"] == "read"
        assert [e["kind"] for e in read["events"]] == ["delivered", "read"]
    _assert_no_numbers_logged(server)


@pytest.mark.parametrize(
    ("text", "stops"),
    [
        ("STOP", True),
        ("  stop ", True),
        ("Unsubscribe", True),
        ("stopall", True),
        ("CANCEL\n", True),
        ("end", True),
        ("Quit", True),
        ("stop please", False),
        ("thanks", False),
        ("", False),
        (None, False),
    ],
)
def test_stop_keyword_rule(text: str | None, stops: bool) -> None:
    assert is_stop_keyword(text) is stops
    assert marketing_purposes({"marketing_rcs": 1, "marketing_sms": 1, "transactional_rcs": 1}) == [
        "marketing_rcs",
        "marketing_sms",
    ]
