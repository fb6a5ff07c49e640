"""Tenants are walled off: tenant A's key, given tenant B's ids, gets 404, never B's data and
never a 403 (which would confirm the id exists), and changes nothing.

The calls are derived from the live OpenAPI document, so a new endpoint is covered without
editing this file: every operation whose path names an id, every query parameter that is an
id, and every request body that carries one. An id-taking operation this file cannot place
(a parameter name it does not know) fails the test until it is given a value or a reason.
"""

from __future__ import annotations

import json
import re
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.reliability.live_api import LiveApi, changed_tables
from tests.reliability.procs import report

PHONE = "+447911200001"
PURPOSE = "marketing_rcs"

#: Path and query parameters that are not ids of a tenant's records, and why.
NOT_IDS = {
    "tenant": "a tenant's public name: its JWKS is public; its CMP webhook takes only its own "
    "secret's signature (tests/e2e/test_cmp_webhooks.py: another tenant's secret is a 401)",
    "adapter": "one of the CMP formats (generic, tcf, gpp), the same for every tenant",
    "provider": "a provider name (rbm, sms); callbacks are signed by the provider",
    "name": "a purpose name in the caller's own catalogue: PUT defines it there",
    "consent_type": "a purpose name, resolved in the caller's own catalogue",
    "month": "a calendar month",
    "cursor": "an opaque page position the caller was given",
}

#: Body fields that name a record (their operations get a body with B's id in it).
BODY_IDS = {"template_id", "hashed_id", "campaign_id", "device_id", "message_id"}

#: Operations with an id in the body: a body that is valid but for the id being B's.
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/v1/consents/lookup"): {"hashed_id": "{hashed_id}"},
    ("post", "/v1/consent-tokens"): {"hashed_id": "{hashed_id}", "consent_type": PURPOSE},
    ("post", "/v1/messages"): {
        "to": "+447911200002",
        "consent_type": PURPOSE,
        "template_id": "{template_id}",
        "idempotency_key": "iso-1",
    },
    ("post", "/v1/campaigns"): {"template_id": "{template_id}", "consent_type": PURPOSE},
    ("post", "/v1/devices"): {"hashed_id": "{hashed_id}", "rcs": True},
}

#: Body-carrying operations where another tenant's id is not a lookup, and why.
BODY_NOT_LOOKUPS = {
    ("post", "/v1/consent-events"): "an event may name any hashed id: it is recorded for the "
    "caller's tenant (hashed ids are keyed by each tenant's own salt, so B's hash names no "
    "one in A); it never reads B's records",
}

#: Bodies of id-taking operations that need one (the id alone must be the reason to refuse).
PATH_BODIES = {
    ("put", "/v1/campaigns/{campaign_id}/audience"): (b"phone\n+447911200003\n", "text/csv"),
}

#: Values for required query parameters that are not the id under test.
QUERY_VALUES = {"consent_type": PURPOSE, "month": "2026-01"}


def _seed(http: httpx.Client) -> dict[str, str]:
    """One of each record in tenant B; their ids."""

    def ok(r: httpx.Response) -> dict[str, Any]:
        assert r.status_code in (200, 201), r.text
        body: dict[str, Any] = r.json()
        return body

    ids: dict[str, str] = {}
    endpoint = ok(
        http.post(
            "/v1/crm/endpoints",
            json={"url": "https://crm.example/hooks", "event_types": ["consent.changed"]},
        )
    )
    ids["endpoint_id"] = endpoint["endpoint_id"]
    event = {
        "consent_id": "iso-b-1",
        "phone": PHONE,
        "consent_type": PURPOSE,
        "status": "granted",
        "timestamp": "2026-01-05T10:00:00Z",
        "source": "web",
    }
    ingested = ok(http.post("/v1/consent-events", json=event))
    ids["hashed_id"], ids["seq"] = ingested["hashed_id"], str(ingested["seq"])
    ids["delivery_id"] = str(ok(http.get("/v1/crm/deliveries"))["deliveries"][0]["delivery_id"])
    device = ok(http.post("/v1/devices", json={"hashed_id": ids["hashed_id"], "rcs": True}))
    ids["device_id"] = device["device_id"]
    template = ok(http.post("/v1/templates", json={"name": "iso", "text": "Hello from B"}))
    ids["template_id"] = template["template_id"]
    message = ok(
        http.post(
            "/v1/messages",
            json={
                "to": PHONE,
                "consent_type": PURPOSE,
                "template_id": ids["template_id"],
                "idempotency_key": "iso-b-msg",
            },
        )
    )
    ids["message_id"] = message["message_id"]
    campaign = ok(
        http.post(
            "/v1/campaigns", json={"template_id": ids["template_id"], "consent_type": PURPOSE}
        )
    )
    ids["campaign_id"] = campaign["campaign_id"]
    return ids


def _fill(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str):
        return re.sub(r"\{(\w+)\}", lambda m: ids[m.group(1)], value)
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    return value


def _never_issued(ids: dict[str, str]) -> dict[str, str]:
    """Ids of the same shapes that no tenant was ever given."""
    out = {}
    for name, value in ids.items():
        if value.isdigit():
            out[name] = str(10**9 + int(value))
        elif re.fullmatch(r"[0-9a-f]+", value):
            out[name] = secrets.token_hex(len(value) // 2)
        else:
            out[name] = str(uuid.uuid4())
    return out


@dataclass
class Call:
    """One request with placeholders for ids. ``by_path``: the path names the record, the
    answer must be 404. Otherwise (a query filter, a body field) the answer must be the one
    an id that was never issued gets: the same status, the same problem."""

    where: str
    method: str
    path: str
    by_path: bool
    params: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None
    content: tuple[bytes, str] | None = None

    def send(self, http: httpx.Client, ids: dict[str, str]) -> httpx.Response:
        content, kind = self.content or (None, None)
        return http.request(
            self.method.upper(),
            _fill(self.path, ids),
            params=_fill(self.params, ids),
            json=None if self.body is None else _fill(self.body, ids),
            content=content,
            headers={"content-type": kind} if kind else None,
        )


def _body_properties(doc: dict[str, Any], operation: dict[str, Any]) -> set[str]:
    content = operation.get("requestBody", {}).get("content", {})
    names: set[str] = set()
    for media in content.values():
        schema = media.get("schema", {})
        for ref in [schema, *schema.get("oneOf", [])]:
            if "$ref" in ref:
                ref = doc["components"]["schemas"][ref["$ref"].rsplit("/", 1)[1]]
            names |= set(ref.get("properties", {}))
    return names


def _calls(doc: dict[str, Any], ids: dict[str, str]) -> tuple[list[Call], list[str]]:
    """Every call to make with B's ids, and every id-taking operation left uncovered."""
    calls: list[Call] = []
    uncovered: list[str] = []
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            where = f"{method.upper()} {path}"
            params = operation.get("parameters", [])
            in_path = [p["name"] for p in params if p["in"] == "path"]
            in_query = [p["name"] for p in params if p["in"] == "query"]
            unknown = [n for n in in_path if n not in ids and n not in NOT_IDS]
            unknown += [n for n in in_query if n.endswith("_id") and n not in ids | NOT_IDS]
            if unknown:
                uncovered.append(f"{where}: no value or reason for {unknown}")
                continue
            required = {
                p["name"]: QUERY_VALUES.get(p["name"], "x")
                for p in params
                if p.get("required") and p["in"] == "query"
            }
            if any(n in ids for n in in_path):
                content = PATH_BODIES.get((method, path))
                calls.append(Call(where, method, path, True, required, content=content))
            for name in in_query:
                if name.endswith("_id") and name in ids:
                    query = {**required, name: f"{{{name}}}"}
                    calls.append(Call(f"{where}?{name}=", method, path, False, query))
            body_ids = _body_properties(doc, operation) & BODY_IDS
            if body_ids and (method, path) not in BODY_NOT_LOOKUPS:
                if (method, path) not in BODIES:
                    uncovered.append(f"{where}: body names {sorted(body_ids)}, no body to send")
                    continue
                calls.append(
                    Call(f"{where} (body)", method, path, False, body=BODIES[(method, path)])
                )
    return calls, uncovered


def _without_ids(response: httpx.Response, ids: dict[str, str]) -> str:
    text = response.text
    for value in ids.values():
        if len(value) > 3:  # (a short one, a ledger seq, would match any digit)
            text = text.replace(value, "<id>")
    return text


def _leaks(response: httpx.Response, ids: dict[str, str]) -> list[str]:
    """B's ids in the answer, other than in ``instance`` (the caller's own request path)."""
    try:
        body = response.json()
    except ValueError:
        body = response.text
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k != "instance"}
    text = json.dumps(body)
    return [name for name, value in ids.items() if len(value) > 3 and value in text]


def test_another_tenants_ids_are_404(live_api: LiveApi) -> None:
    a = live_api.tenant("iso-a")
    b = live_api.tenant("iso-b")
    with live_api.client(b["api_key"]) as as_b:
        ids = _seed(as_b)
    doc = httpx.get(f"{live_api.url}/openapi.json").json()
    calls, uncovered = _calls(doc, ids)
    assert not uncovered, "id-taking operations this test does not cover:\n" + "\n".join(uncovered)
    failures: list[str] = []
    unknown = _never_issued(ids)
    before = live_api.digest()
    with live_api.client(a["api_key"]) as as_a:
        for call in calls:
            r = call.send(as_a, ids)
            after = live_api.digest()
            if call.by_path and r.status_code != 404:
                failures.append(f"{call.where}: {r.status_code} {r.text[:200]}")
            elif r.status_code >= 400 and not r.headers["content-type"].startswith(
                "application/problem+json"
            ):
                failures.append(f"{call.where}: a {r.status_code} that is not a problem")
            if not call.by_path:
                baseline = call.send(as_a, unknown)
                if (r.status_code, _without_ids(r, ids)) != (
                    baseline.status_code,
                    _without_ids(baseline, unknown),
                ):
                    failures.append(
                        f"{call.where}: {r.status_code} {r.text[:150]} where an id never issued "
                        f"gets {baseline.status_code} {baseline.text[:150]}"
                    )
                after = live_api.digest()
            if leaked := _leaks(r, ids):
                failures.append(f"{call.where}: the answer holds B's {leaked}")
            if changed := changed_tables(before, after):
                failures.append(f"{call.where}: changed {changed}")
            before = after
    # B's records are all still there, untouched, for B.
    with live_api.client(b["api_key"]) as as_b:
        assert as_b.get(f"/v1/subjects/{ids['hashed_id']}/consents").json()["consents"]
        assert as_b.get(f"/v1/campaigns/{ids['campaign_id']}").status_code == 200
        assert as_b.get(f"/v1/messages/{ids['message_id']}").status_code == 200
    line = report(
        f"tenant isolation on {live_api.backend}: {len(calls)} calls with another tenant's "
        f"ids ({len(ids)} kinds of id) from the live schema, {len(failures)} not a clean 404"
    )
    assert len(calls) >= 15, line
    assert not failures, "\n".join([line, *failures])
