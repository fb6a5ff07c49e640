"""The audit API over real HTTP: an auditor key made by the CLI reads every report and can
write nothing; sends, fallbacks and point-in-time consent as JSON pages and CSV; an export
bundle checked by `consentgate audit verify-bundle` and broken by any flipped byte."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from consentgate.audit import BundleInvalid, verify_bundle
from consentgate.domain.timeutil import format_rfc3339
from tests.e2e.conftest import Server

NATIVE, SMS, NOCONSENT, GONE = "+447911200001", "+447911200002", "+447911200003", "+447911200004"


def _now(delta: timedelta = timedelta(0)) -> str:
    return format_rfc3339(datetime.now(UTC).replace(microsecond=0) + delta)


def _event(phone: str, status: str, hours_ago: int, n: int) -> dict[str, Any]:
    return {
        "consent_id": f"audit-{n}",
        "phone": phone,
        "consent_type": "marketing_rcs",
        "status": status,
        "timestamp": _now(-timedelta(hours=hours_ago)),
    }


def _send(http: httpx.Client, to: str, template: str, key: str) -> dict[str, Any]:
    r = http.post(
        "/v1/messages",
        json={
            "to": to,
            "consent_type": "marketing_rcs",
            "template_id": template,
            "variables": {"first_name": "Ada"},
            "idempotency_key": key,
        },
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _setup(server: Server) -> dict[str, Any]:
    acme = server.create_tenant("acme")
    sandbox = httpx.Client(base_url=f"{server.url}/sandbox", timeout=10)
    sandbox.put(
        "/devices", json={"devices": [{"phone": NATIVE, "rcs": True, "native_e2ee": True}]}
    ).raise_for_status()
    with server.client(acme["api_key"]) as http:
        r = http.post(
            "/v1/consent-events",
            json={
                "events": [
                    _event(NATIVE, "granted", 5, 1),
                    _event(SMS, "granted", 5, 2),
                    _event(GONE, "granted", 5, 3),
                    _event(GONE, "withdrawn", 4, 4),
                ]
            },
        )
        assert r.status_code == 201, r.text
        hashed = {
            p: e["hashed_id"]
            for p, e in zip((NATIVE, SMS, GONE), r.json()["events"][:3], strict=True)
        }
        plain = http.post("/v1/templates", json={"name": "p", "text": "Hi {{first_name}}"})
        secret = http.post(
            "/v1/templates", json={"name": "s", "text": "{{first_name}}: result", "sensitive": True}
        )
        start = _now(-timedelta(seconds=1))
        sent = {
            "native": _send(http, NATIVE, plain.json()["template_id"], "k1"),
            "redacted": _send(http, SMS, plain.json()["template_id"], "k2"),
            "link": _send(http, SMS, secret.json()["template_id"], "k3"),
            "nobody": _send(http, NOCONSENT, plain.json()["template_id"], "k4"),
            "gone": _send(http, GONE, plain.json()["template_id"], "k5"),
        }
        end = _now(timedelta(seconds=2))
    flushed = sandbox.post("/deliveries/flush", params={"read": "true"}).json()
    assert flushed["callbacks_failed"] == 0 and flushed["delivered"] >= 1
    auditor = json.loads(server.cli("tenant", "add-key", "acme", "--scopes", "audit:read").stdout)
    assert auditor["scopes"] == ["audit:read"] and auditor["api_key"].startswith("cg_")
    return {
        "acme": acme,
        "auditor": auditor["api_key"],
        "hashed": hashed,
        "sent": sent,
        "span": {"from": start, "to": end},
    }


def _csv(response: httpx.Response) -> list[dict[str, str]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(response.text, newline="")))


def _pages(http: httpx.Client, path: str, key: str, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(20):
        r = http.get(path, params={**params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        items += r.json()[key]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("paging did not end")


def test_audit_reports_export_and_read_only_key(server: Server, tmp_path: Path) -> None:
    s = _setup(server)
    sent, hashed, span = s["sent"], s["hashed"], s["span"]
    http = server.client(s["auditor"])

    # -- sends by mode, paged and as CSV --------------------------------------------------
    r = http.get("/v1/audit/sends", params=span)
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["by_mode"] == {"native_e2ee": 1, "secure_link": 1, "sms_redacted": 1}
    assert report["by_action"] == {"fallback": 2, "sent": 1, "skipped": 2}
    rows = {x["message_id"]: x for x in report["sends"]}
    assert set(rows) == {m["message_id"] for m in sent.values()}
    native = rows[sent["native"]["message_id"]]
    assert native["hashed_id"] == hashed[NATIVE] and native["mode"] == "native_e2ee"
    assert native["consent_seq"] == sent["native"]["consent_seq"] is not None
    assert rows[sent["nobody"]["message_id"]]["hashed_id"] is None  # never recorded
    assert rows[sent["gone"]["message_id"]]["reason"] == "withdrawn"
    assert _pages(http, "/v1/audit/sends", "sends", limit=2, **span) == report["sends"]
    table = _csv(http.get("/v1/audit/sends", params=span, headers={"Accept": "text/csv"}))
    assert list(table[0]) == [
        "message_id", "hashed_id", "consent_type", "action", "mode", "reason",
        "consent_seq", "template_id", "campaign_id", "at",
    ]  # fmt: skip
    assert table == [
        {k: "" if v is None else str(v) for k, v in x.items()} for x in report["sends"]
    ]
    first = http.get("/v1/audit/sends", params={**span, "limit": 2}, headers={"Accept": "text/csv"})
    assert len(_csv(first)) == 2
    link = first.headers["link"]
    assert link.endswith('>; rel="next"')
    rest = http.get(link[1 : link.index(">")], headers={"Accept": "text/csv"})
    assert [x["message_id"] for x in _csv(rest)] == [x["message_id"] for x in table[2:4]]

    # -- fallbacks --------------------------------------------------------------------------
    fallbacks = http.get("/v1/audit/fallbacks", params=span).json()["fallbacks"]
    assert sorted((f["mode"], f["reason"], f["hashed_id"]) for f in fallbacks) == [
        ("secure_link", "no_device_key", hashed[SMS]),
        ("sms_redacted", "no_device_key", hashed[SMS]),
    ]
    fb_csv = _csv(http.get("/v1/audit/fallbacks", params=span, headers={"Accept": "text/csv"}))
    assert list(fb_csv[0]) == ["message_id", "hashed_id", "mode", "reason", "at"]
    assert len(fb_csv) == 2

    # -- who was consented, when -------------------------------------------------------------
    def consents(**params: Any) -> list[dict[str, Any]]:
        return _pages(
            http, "/v1/audit/consents", "subjects", consent_type="marketing_rcs", **params
        )

    granted = consents(as_of=_now())
    assert sorted(x["hashed_id"] for x in granted) == sorted([hashed[NATIVE], hashed[SMS]])
    everyone = {x["hashed_id"]: x["status"] for x in consents(as_of=_now(), status="all")}
    assert everyone == {
        hashed[NATIVE]: "granted",
        hashed[SMS]: "granted",
        hashed[GONE]: "withdrawn",
    }
    between = consents(as_of=_now(-timedelta(hours=4, minutes=30)))
    assert hashed[GONE] in {x["hashed_id"] for x in between}  # before the withdrawal
    assert consents(as_of=_now(-timedelta(hours=6))) == []
    assert consents(as_of=_now(), known_at=_now(-timedelta(minutes=10))) == []  # not yet known
    assert len(consents(as_of=_now(), limit=1)) == 2
    table = _csv(
        http.get(
            "/v1/audit/consents",
            params={"as_of": _now(), "consent_type": "marketing_rcs", "status": "all"},
            headers={"Accept": "text/csv"},
        )
    )
    assert list(table[0]) == ["hashed_id", "status", "effective_at", "seq"]
    assert {x["hashed_id"]: x["status"] for x in table} == everyone

    # -- bad input: problems naming the field --------------------------------------------------
    for path, params, field in [
        ("/v1/audit/consents", {"as_of": "soon", "consent_type": "marketing_rcs"}, "as_of"),
        ("/v1/audit/consents", {"as_of": _now()}, "consent_type"),
        ("/v1/audit/consents", {"as_of": _now(), "consent_type": "x", "limit": 0}, "limit"),
        ("/v1/audit/sends", {"from": span["to"], "to": span["from"]}, "to"),
        ("/v1/audit/fallbacks", {"from": "2026-02-30T00:00:00Z", "to": _now()}, "from"),
        ("/v1/audit/sends", {**span, "cursor": "bm9wZQ"}, "cursor"),
    ]:
        r = http.get(path, params=params)
        assert r.status_code == 422, (path, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["field"] == field
    assert http.get("/v1/audit/subjects/nope/export").status_code == 422

    # -- the export bundle, verified offline ---------------------------------------------
    r = http.get(f"/v1/audit/subjects/{hashed[SMS]}/export")
    assert r.status_code == 200, r.text
    bundle = tmp_path / "bundle.json"
    bundle.write_bytes(r.content)
    doc = json.loads(r.content)
    assert [x["action"] for x in doc["sends"]] == ["fallback", "fallback"]
    assert all(x["consent_seq"] is not None for x in doc["sends"])
    assert any(x["events"] for x in doc["sends"])  # delivery events travel with their send
    assert set(doc["receipts"]) == {"marketing_rcs"}
    keys = tmp_path / "ledger.key"
    keys.write_text(http.get("/v1/ledger/key", params={"all": "true"}).text)
    jwks = httpx.get(f"{server.url}/v1/tenants/acme/jwks.json").json()
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))
    args = ["audit", "verify-bundle", str(bundle), "--jwks", str(tmp_path / "jwks.json")]
    done = server.cli(*args, "--key", str(keys))
    summary = json.loads(done.stdout)
    assert summary["ok"] and summary["sends_checked"] == 2 and summary["leaves"] == 1

    verifiers = keys.read_text().split()
    for n, pos in enumerate(range(0, len(r.content), max(1, len(r.content) // 250))):
        flipped = bytearray(r.content)
        flipped[pos] ^= (0x01, 0x10, 0x40, 0x80)[n % 4]
        try:
            verify_bundle(bytes(flipped), jwks, verifiers)
        except BundleInvalid:
            continue
        raise AssertionError(f"a flipped byte at {pos} went unnoticed")
    flipped = bytearray(r.content)
    flipped[len(flipped) // 2] ^= 0x01
    bundle.write_bytes(bytes(flipped))
    bad = server.cli(*args, "--key", str(keys), check=False)
    assert bad.returncode == 1 and bad.stderr.startswith("INVALID:")

    # -- the auditor writes nothing; other scopes do not read audit ------------------------
    before = http.get("/v1/ledger/checkpoint").text
    spec = httpx.get(f"{server.url}/openapi.json").json()
    writes = 0
    for path, methods in spec["paths"].items():
        if path.startswith(("/v1/providers/", "/v1/tenants/")):
            continue  # authenticated by provider / CMP webhook signatures, not API keys
        for method in methods:
            if method in ("get", "head", "options"):
                continue
            url = path.replace("{", "").replace("}", "")
            r = http.request(method.upper(), url, json={})
            assert r.status_code == 403, (method, path, r.status_code, r.text)
            writes += 1
    assert writes >= 10
    assert http.get("/v1/ledger/checkpoint").text == before
    reader = json.loads(server.cli("tenant", "add-key", "acme", "--scopes", "consent:read").stdout)
    with server.client(reader["api_key"]) as other:
        assert other.get("/v1/audit/sends", params=span).status_code == 403
        assert other.get(f"/v1/audit/subjects/{hashed[SMS]}/export").status_code == 403
    with server.client(s["acme"]["api_key"]) as admin:  # owner keys hold admin
        assert admin.get("/v1/audit/fallbacks", params=span).status_code == 200

    # -- tenants are walled off -----------------------------------------------------------
    beta = server.create_tenant("beta")
    with server.client(beta["api_key"]) as foreign:
        assert foreign.get(f"/v1/audit/subjects/{hashed[SMS]}/export").status_code == 404
        assert foreign.get("/v1/audit/sends", params=span).json()["sends"] == []
        assert (
            foreign.get(
                "/v1/audit/consents",
                params={"as_of": _now(), "consent_type": "marketing_rcs", "status": "all"},
            ).json()["subjects"]
            == []
        )
    http.close()
