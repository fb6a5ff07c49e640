"""The hot path (api/hotpath.py) answers exactly as the FastAPI routes it stands in for.

A key this process has not authenticated yet is served by the app (which then caches it);
the same request with a key already cached is served by the hot path. Each case below sends
the same request both ways, with two keys of the same tenant and scopes, and compares
status, content type and body, so a drift between the two implementations fails here.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from consentgate.api.app import create_app
from consentgate.bootstrap import App
from consentgate.tenants.service import Scope

Answer = tuple[int, str, Any]


def _exchange(
    core: App, requests: list[tuple[str, str, dict[str, str], bytes | None]]
) -> list[Answer]:
    async def go() -> list[Answer]:
        transport = httpx.ASGITransport(app=create_app(core))
        out: list[Answer] = []
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for method, path, headers, body in requests:
                r = await client.request(method, path, headers=headers, content=body)
                out.append((r.status_code, r.headers.get("content-type", ""), r.json()))
        return out

    return asyncio.run(go())


def _both(
    core: App, scopes: frozenset[Scope], method: str, path: str, body: Any = None
) -> tuple[Answer, Answer]:
    """The request served by the app (a key never seen: the app authenticates it) and then
    by the hot path (a key authenticated before: served from the principal cache)."""
    warm = core.tenants.add_key("acme", scopes).api_key
    cold = core.tenants.add_key("acme", scopes).api_key
    core.tenants.authenticate(warm)
    assert core.tenants.cached_principal(warm) is not None
    assert core.tenants.cached_principal(cold) is None
    raw = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    json_type = {"Content-Type": "application/json"} if raw is not None else {}
    first, second = _exchange(
        core,
        [
            (method, path, {"Authorization": f"Bearer {cold}", **json_type}, raw),
            (method, path, {"Authorization": f"Bearer {warm}", **json_type}, raw),
        ],
    )
    return first, second


def _event(consent_id: str, **over: Any) -> dict[str, Any]:
    return {
        "consent_id": consent_id,
        "phone": "+447911123456",
        "consent_type": "marketing_rcs",
        "status": "granted",
        "timestamp": "2026-11-01T10:00:00Z",
        "cmp_version": "t",
        **over,
    }


def test_lookup_found_missing_and_malformed(core: App, tenant: dict[str, Any]) -> None:
    readers = frozenset({Scope.CONSENT_READ})
    writer = {"Authorization": f"Bearer {tenant['api_key']}", "Content-Type": "application/json"}
    [(status, _, created)] = _exchange(
        core, [("POST", "/v1/consent-events", writer, json.dumps(_event("c1")).encode())]
    )
    assert status == 201
    for path, expected in [
        (f"/v1/subjects/{created['hashed_id']}/consents", 200),
        (f"/v1/subjects/{'0' * 64}/consents", 404),
        ("/v1/subjects/not-a-hash/consents", 422),
    ]:
        by_app, by_hot = _both(core, readers, "GET", path)
        assert by_app == by_hot, path
        assert by_hot[0] == expected
    assert by_hot[2]["type"] == "/problems/invalid-input"  # the malformed one, as a problem


def test_lookup_without_the_scope_is_refused_by_the_app(core: App, tenant: dict[str, Any]) -> None:
    writers = frozenset({Scope.CONSENT_WRITE})  # cannot read
    by_app, by_hot = _both(core, writers, "GET", f"/v1/subjects/{'0' * 64}/consents")
    assert by_app == by_hot and by_hot[0] == 403


def test_single_event_ingest_created_replayed_conflict_invalid(
    core: App, tenant: dict[str, Any]
) -> None:
    writers = frozenset({Scope.CONSENT_WRITE})
    # The app records c-new; the hot path then sees the identical replay (200, same answer).
    by_app, by_hot = _both(core, writers, "POST", "/v1/consent-events", _event("c-new"))
    assert by_app[0] == 201 and by_hot == (200, by_app[1], by_app[2])
    # Each case sent once to each path, under ids of their own where the content matters.
    cases: list[tuple[str, Any, int]] = [
        ("conflict", _event("c-new", status="withdrawn"), 409),
        ("unknown purpose", _event("c-x", consent_type="nope"), 422),
        ("bad status", _event("c-y", status="maybe"), 422),
        ("two identifiers", _event("c-z", hashed_id="0" * 64), 422),
        ("not json", b"{nope", 400),
        ("bad utf-8", b'{"consent_id": "\xff"}', 400),
    ]
    for name, body, expected in cases:
        by_app, by_hot = _both(core, writers, "POST", "/v1/consent-events", body)
        assert by_app == by_hot, name
        assert by_hot[0] == expected, (name, by_hot)
        assert by_hot[1] == "application/problem+json", name
    # A batch goes to the app even with a cached key, and is answered as a batch.
    [(status, _, answer)] = _exchange(
        core,
        [
            (
                "POST",
                "/v1/consent-events",
                {
                    "Authorization": f"Bearer {tenant['api_key']}",
                    "Content-Type": "application/json",
                },
                json.dumps({"events": [_event("b1"), _event("b2", status="withdrawn")]}).encode(),
            )
        ],
    )
    assert status == 201 and [e["seq"] for e in answer["events"]] == [1, 2]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_concurrent_single_events_each_get_their_own_answer(
    core: App, tenant: dict[str, Any]
) -> None:
    """Forty requests at once, two of them bad: each gets its own answer, the good ones are
    all recorded (in one or a few transactions), the bad ones recorded nothing."""
    key = tenant["api_key"]
    core.tenants.authenticate(key)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    bodies = [_event(f"k{i}", phone=f"+4479111{i:05d}") for i in range(40)]
    bodies[7]["consent_type"] = "nope"
    bodies[23]["timestamp"] = "yesterday"

    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=create_app(core))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await asyncio.gather(
                *(client.post("/v1/consent-events", headers=headers, json=b) for b in bodies)
            )

    answers = asyncio.run(go())
    assert [r.status_code for r in answers] == [422 if i in (7, 23) else 201 for i in range(40)]
    seqs = sorted(r.json()["seq"] for r in answers if r.status_code == 201)
    assert seqs == list(range(38))
    for i in (7, 23):
        assert answers[i].headers["content-type"] == "application/problem+json"
    recorded = {
        e["consent_id"]
        for h in {r.json()["hashed_id"] for r in answers if r.status_code == 201}
        for e in core.queries.history("acme", h)
    }
    assert recorded == {f"k{i}" for i in range(40) if i not in (7, 23)}
