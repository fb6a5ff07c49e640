"""Analytics over real HTTP against the real server and sandbox carrier: a campaign is sent
and its receipts come back, then engagement (k-suppressed, then DP-noised and charged until
a 429), join tokens, conversions and attribution are read with an ``analytics:read`` key.
Scopes, validation problems and tenant walls are checked on the way, and every analytics
answer is scanned for anything row-level: no message id, hashed id, subject reference or
number."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import httpx

from tests.e2e.conftest import Server

AUDIENCE = [f"+4479112{i:05d}" for i in range(6)]
ROW_LEVEL = {
    "message_id",
    "subject_ref",
    "hashed_id",
    "phone",
    "provider_message_id",
    "device_kid",
    "consent_seq",
    "idempotency_key",
    "created_us",
    "at",
}


def _keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


def _problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["type"] == f"/problems/{code}"
    return body


def _send_campaign(http: httpx.Client, template: str) -> str:
    campaign = http.post(
        "/v1/campaigns", json={"template_id": template, "consent_type": "marketing_rcs"}
    )
    assert campaign.status_code == 201, campaign.text
    cid: str = campaign.json()["campaign_id"]
    csv = "phone\n" + "".join(f"{p}\n" for p in AUDIENCE)
    upload = http.put(
        f"/v1/campaigns/{cid}/audience", content=csv, headers={"content-type": "text/csv"}
    )
    assert upload.status_code == 200, upload.text
    assert http.post(f"/v1/campaigns/{cid}/send").status_code == 200
    deadline = time.monotonic() + 60
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = http.get(f"/v1/campaigns/{cid}").json()
        if status["status"] == "done":
            break
        time.sleep(0.1)
    assert status["status"] == "done" and status["skipped"] == 0, status
    return cid


def test_analytics_over_http(server: Server) -> None:
    acme = server.create_tenant("acme")
    other = server.create_tenant("other")
    analyst = json.loads(
        server.cli("tenant", "add-key", "acme", "--scopes", "analytics:read").stdout
    )["api_key"]
    auditor = json.loads(server.cli("tenant", "add-key", "acme", "--scopes", "audit:read").stdout)[
        "api_key"
    ]
    month = datetime.now(UTC).strftime("%Y-%m")
    sandbox = httpx.Client(base_url=f"{server.url}/sandbox", timeout=10)
    sandbox.put(
        "/devices", json={"devices": [{"phone": p, "rcs": True} for p in AUDIENCE]}
    ).raise_for_status()
    answers: list[httpx.Response] = []
    with (
        server.client(acme["api_key"]) as admin,
        server.client(analyst) as http,
        server.client(auditor) as audit_key,
        server.client(other["api_key"]) as outsider,
    ):
        events = [
            {
                "consent_id": f"cmp-{i}",
                "phone": p,
                "consent_type": "marketing_rcs",
                "status": "granted",
                "timestamp": "2026-01-01T10:00:00Z",
            }
            for i, p in enumerate(AUDIENCE)
        ]
        assert admin.post("/v1/consent-events", json={"events": events}).status_code == 201
        promo = admin.post("/v1/templates", json={"name": "promo", "text": "Sale!"})
        nudge = admin.post("/v1/templates", json={"name": "nudge", "text": "Still there?"})
        promo_id, nudge_id = promo.json()["template_id"], nudge.json()["template_id"]
        days = {datetime.now(UTC).strftime("%Y-%m-%d")}
        campaign = _send_campaign(admin, promo_id)
        days.add(datetime.now(UTC).strftime("%Y-%m-%d"))
        assert sandbox.post("/deliveries/flush", params={"read": "true"}).status_code == 200
        message_ids = []
        for i, phone in enumerate(AUDIENCE[:2]):
            sent = admin.post(
                "/v1/messages",
                json={
                    "to": phone,
                    "consent_type": "marketing_rcs",
                    "template_id": nudge_id,
                    "variables": {},
                    "idempotency_key": f"nudge-{i}",
                },
            )
            assert sent.status_code == 200, sent.text
            message_ids.append(sent.json()["message_id"])
        assert sandbox.post("/deliveries/flush").status_code == 200

        # Scopes: the analyst reads but cannot change settings; an auditor reads nothing here.
        _problem(
            http.put("/v1/analytics/settings", json={"k_threshold": 2, "monthly_epsilon": 1}),
            403,
            "forbidden",
        )
        _problem(audit_key.get("/v1/analytics/engagement"), 403, "forbidden")
        for bad, field in [
            ({"k_threshold": 1, "monthly_epsilon": 2.0}, "k_threshold"),
            ({"k_threshold": "4", "monthly_epsilon": 2.0}, "k_threshold"),
            ({"k_threshold": 4, "monthly_epsilon": -1}, "monthly_epsilon"),
            ({"k_threshold": 4}, "monthly_epsilon"),
            ({"k_threshold": 4, "monthly_epsilon": 2.0, "k": 3}, "k"),
        ]:
            r = admin.put("/v1/analytics/settings", json=bad)
            assert _problem(r, 422, "invalid-input")["field"] == field
        settings = admin.put(
            "/v1/analytics/settings", json={"k_threshold": 3, "monthly_epsilon": 2}
        )
        assert settings.status_code == 200, settings.text
        assert settings.json()["budget"] == {"month": month, "spent": 0.0, "remaining": 2.0}

        # k-suppression: the campaign's 6 people are shown, the 2 nudged are not.
        r = http.get("/v1/analytics/engagement", params={"group_by": "template_id"})
        assert r.status_code == 200, r.text
        answers.append(r)
        rows = {row["template_id"]: row for row in r.json()["rows"]}
        assert rows[promo_id] == {
            "template_id": promo_id,
            "suppressed": False,
            "subjects": 6,
            "sent": 6,
            "delivered": 6,
            "read": 6,
        }
        assert rows[nudge_id]["suppressed"] is True and rows[nudge_id]["sent"] is None
        r = http.get(
            "/v1/analytics/engagement",
            params={"campaign_id": campaign, "group_by": "day,mode,campaign"},
        )
        answers.append(r)
        [row] = r.json()["rows"]
        assert row["campaign"] == campaign and row["sent"] == 6 and row["day"] in days
        for params, field in [
            ({"group_by": "day,hashed_id"}, "group_by"),
            ({"dp_epsilon": "lots"}, "dp_epsilon"),
            ({"dp_epsilon": "0"}, "dp_epsilon"),
            ({"from": "last week"}, "from"),
        ]:
            r = http.get("/v1/analytics/engagement", params=params)
            assert _problem(r, 422, "invalid-input")["field"] == field

        # DP: charged, then refused with 429 and nothing charged.
        r = http.get(
            "/v1/analytics/engagement",
            params={"campaign_id": campaign, "group_by": "mode", "dp_epsilon": "1.5"},
        )
        assert r.status_code == 200, r.text
        answers.append(r)
        assert len(r.json()["rows"]) == 5  # every delivery mode, empty ones included
        assert r.json()["dp"]["epsilon"] == 1.5
        assert r.json()["dp"]["budget"]["remaining"] == 0.5
        refused = http.get(
            "/v1/analytics/engagement", params={"campaign_id": campaign, "dp_epsilon": "1"}
        )
        body = _problem(refused, 429, "privacy-budget-exhausted")
        assert body["epsilon_remaining"] == 0.5
        assert http.get("/v1/analytics/settings").json()["budget"]["spent"] == 1.5

        # Join tokens, conversions, attribution.
        r = http.get("/v1/analytics/join-tokens", params={"month": month, "campaign_id": campaign})
        assert r.status_code == 200, r.text
        answers.append(r)
        tokens = r.json()["tokens"]
        assert r.json()["count"] == len(tokens) == 6
        hashed_ids = [
            admin.post("/v1/consents/lookup", json={"phone": p}).json()["hashed_id"]
            for p in AUDIENCE
        ]
        _problem(
            http.post("/v1/analytics/conversions", json={"month": month, "tokens": ["x" * 43]}),
            422,
            "invalid-input",
        )
        r = http.post(
            "/v1/analytics/conversions", json={"month": month, "tokens": tokens[:3] + tokens[:1]}
        )
        assert r.status_code == 200, r.text
        assert r.json() == {"month": month, "received": 4, "recorded": 3, "duplicates": 1}
        answers.append(r)
        r = http.get("/v1/analytics/attribution", params={"campaign_id": campaign})
        answers.append(r)
        assert r.json()["rows"] == [
            {"month": month, "suppressed": False, "subjects": 6, "conversions": 3}
        ]

        # Tenant walls: another tenant cannot see the campaign, and its conversions (even of
        # acme's own tokens) never count for acme.
        _problem(
            outsider.get("/v1/analytics/engagement", params={"campaign_id": campaign}),
            404,
            "not-found",
        )
        _problem(
            outsider.get("/v1/analytics/attribution", params={"campaign_id": campaign}),
            404,
            "not-found",
        )
        assert outsider.get("/v1/analytics/engagement").json()["rows"] == []
        outsider.post("/v1/analytics/conversions", json={"month": month, "tokens": tokens[3:]})
        r = http.get("/v1/analytics/attribution", params={"campaign_id": campaign})
        assert r.json()["rows"][0]["conversions"] == 3
        answers.append(http.get("/v1/analytics/settings"))

    # Nothing row-level in any answer: no such field, no identifier in any form.
    for r in answers:
        assert r.status_code == 200
        assert not _keys(r.json()) & ROW_LEVEL, r.text
        for secret in [*hashed_ids, *message_ids, *AUDIENCE, *(p[1:] for p in AUDIENCE)]:
            assert secret not in r.text
