"""POST /v1/messages against the sandbox carrier over real HTTP: every delivery mode, the
envelope opened by the device SDK, idempotency, immediate revocation."""

from __future__ import annotations

from typing import Any

import httpx

from consentgate.crypto.envelope import SUITE_MLKEM768_X25519
from consentgate.device import DeviceKeys, register
from tests.e2e.conftest import Server

NATIVE, APP, INAPP, SMS, NOCONSENT, GONE = (
    "+447911000001",
    "+447911000002",
    "+447911000003",
    "+447911000004",
    "+447911000005",
    "+447911000006",
)
# A consent_id is stored as given (the append-only ledger keeps it): a label, never the number.
LABELS = {NATIVE: "native", APP: "app", INAPP: "inapp", SMS: "sms", NOCONSENT: "none", GONE: "gone"}


def _grant(http: httpx.Client, phone: str, status: str = "granted", n: int = 0) -> None:
    r = http.post(
        "/v1/consent-events",
        json={
            "consent_id": f"{LABELS[phone]}-{status}-{n}",
            "phone": phone,
            "consent_type": "marketing_rcs",
            "status": status,
            "timestamp": f"2026-11-0{1 + n}T10:00:00Z",
        },
    )
    assert r.status_code == 201, r.text


def _send(
    http: httpx.Client, to: str, template_id: str, key: str, **variables: str
) -> dict[str, Any]:
    r = http.post(
        "/v1/messages",
        json={
            "to": to,
            "consent_type": "marketing_rcs",
            "template_id": template_id,
            "variables": variables,
            "idempotency_key": key,
        },
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_every_mode_end_to_end(server: Server) -> None:
    acme = server.create_tenant("acme")
    sandbox = httpx.Client(base_url=f"{server.url}/sandbox", timeout=10)
    sandbox.put(
        "/devices",
        json={
            "devices": [
                {"phone": NATIVE, "rcs": True, "native_e2ee": True},
                {"phone": APP, "rcs": True, "native_e2ee": False},
                {"phone": INAPP, "rcs": False, "native_e2ee": False},
            ]
        },
    ).raise_for_status()
    app_keys = DeviceKeys.generate()
    hybrid_keys = DeviceKeys.generate(SUITE_MLKEM768_X25519)
    jwks = httpx.get(f"{server.url}/v1/tenants/acme/jwks.json").json()
    with server.client(acme["api_key"]) as http:
        for phone in (NATIVE, APP, INAPP, SMS, GONE):
            _grant(http, phone)
        _grant(http, GONE, "withdrawn", 1)
        register(server.url, acme["api_key"], keys=app_keys, rcs=True, native_e2ee=False, phone=APP)
        register(
            server.url, acme["api_key"], keys=hybrid_keys, rcs=False, native_e2ee=False, phone=INAPP
        )
        plain = http.post(
            "/v1/templates",
            json={"name": "shipped", "text": "Hi {{first_name}}, your order shipped"},
        ).json()["template_id"]
        secret = http.post(
            "/v1/templates",
            json={
                "name": "result",
                "text": "{{first_name}}, your test result is ready",
                "sensitive": True,
            },
        ).json()["template_id"]

        native = _send(http, NATIVE, plain, "k1", first_name="Ada")
        app = _send(http, APP, plain, "k2", first_name="Ada")
        inapp = _send(http, INAPP, plain, "k3", first_name="Ada")
        sms = _send(http, SMS, plain, "k4", first_name="Ada")
        link = _send(http, SMS, secret, "k5", first_name="Ada")
        nope = _send(http, NOCONSENT, plain, "k6", first_name="Ada")
        gone = _send(http, GONE, plain, "k7", first_name="Ada")

    assert native["decision"] == {"action": "sent", "mode": "native_e2ee", "reason": None}
    assert app["decision"] == {"action": "sent", "mode": "app_layer", "reason": "e2ee_unavailable"}
    assert app["device_kid"] == app_keys.kid and app["consent_seq"] is not None
    assert inapp["decision"] == {"action": "sent", "mode": "in_app", "reason": "no_rcs"}
    assert sms["decision"] == {
        "action": "fallback",
        "mode": "sms_redacted",
        "reason": "no_device_key",
    }
    assert link["decision"] == {
        "action": "fallback",
        "mode": "secure_link",
        "reason": "no_device_key",
    }
    assert nope["decision"] == {"action": "skipped", "mode": None, "reason": "no_consent"}
    assert gone["decision"] == {"action": "skipped", "mode": None, "reason": "withdrawn"}

    carried = {m["provider_message_id"]: m for m in sandbox.get("/messages").json()["messages"]}
    by_to: dict[str, list[dict[str, Any]]] = {}
    for m in carried.values():
        by_to.setdefault(m.get("to") or m.get("device_kid"), []).append(m)
    assert by_to[NATIVE][0]["e2ee"] is True
    app_msg = by_to[APP][0]
    assert "Ada" not in (app_msg["text"] or "")
    opened = app_keys.open(app_msg["envelope"], jwks, tenant="acme")
    assert opened["text"] == "Hi Ada, your order shipped"
    push = [m for m in carried.values() if m["channel"] == "push"]
    assert len(push) == 1
    assert (
        hybrid_keys.open(push[0]["envelope"], jwks, tenant="acme")["text"]
        == "Hi Ada, your order shipped"
    )
    sms_texts = [m["text"] for m in by_to[SMS]]
    assert len(sms_texts) == 2
    assert all("Ada" not in t and "https://" in t for t in sms_texts)  # tokens never in clear
    assert not any("test result" in t for t in sms_texts)  # sensitive content never leaves
    assert NOCONSENT not in by_to and GONE not in by_to


def test_idempotency_and_immediate_revocation(server: Server) -> None:
    acme = server.create_tenant("acme")
    sandbox = httpx.Client(base_url=f"{server.url}/sandbox", timeout=10)
    sandbox.put("/devices", json={"devices": [{"phone": NATIVE, "rcs": True, "native_e2ee": True}]})
    with server.client(acme["api_key"]) as http:
        _grant(http, NATIVE)
        template = http.post("/v1/templates", json={"name": "t", "text": "Hello"}).json()[
            "template_id"
        ]
        first = _send(http, NATIVE, template, "same")
        again = _send(http, NATIVE, template, "same")
        assert again == first
        clash = http.post(
            "/v1/messages",
            json={
                "to": NATIVE,
                "consent_type": "marketing_rcs",
                "template_id": template,
                "variables": {"x": "y"},
                "idempotency_key": "same",
            },
        )
        assert clash.status_code == 409
        assert len(sandbox.get("/messages").json()["messages"]) == 1
        assert _send(http, NATIVE, template, "warm")["decision"]["action"] == "sent"  # cache warm
        _grant(http, NATIVE, "withdrawn", 1)  # acknowledged...
        after = _send(http, NATIVE, template, "after")  # ...so this must not leave
        assert after["decision"] == {"action": "skipped", "mode": None, "reason": "withdrawn"}
        assert len(sandbox.get("/messages").json()["messages"]) == 2
        bad = http.post(
            "/v1/messages",
            json={
                "to": "+44 12",
                "consent_type": "marketing_rcs",
                "template_id": template,
                "idempotency_key": "x",
            },
        )
        assert bad.status_code == 422 and bad.json()["field"] == "to"
