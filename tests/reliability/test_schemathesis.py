"""schemathesis against the live OpenAPI schema of a real ``consentgate serve`` (SQLite and
PostgreSQL): for every operation, requests that fit the schema and requests that break it,
sent over loopback with an owner key (every scope). Each answer must be no 5xx, a status and
content type the schema documents, a body matching the documented model; and a refused request
(4xx) must leave the database exactly as it was (a digest of every table's rows before and
after).

The short form (``make test``) sends a few examples per operation and mode; under
``CONSENTGATE_RELIABILITY=full`` (``make reliability``) a hundred, new ones each run (the
short form's are fixed, so CI is repeatable). Shrinking is off: a failure is reported as
found, with the request that caused it (a curl line), and the run stays bounded.
"""

from __future__ import annotations

import json
import re
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.reliability.live_api import LiveApi, changed_tables
from tests.reliability.procs import full, report, size

EXAMPLES = size(3, 100)
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]


@dataclass
class Tally:
    calls: int = 0
    refused: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        self.calls += other.calls
        self.refused += other.refused
        self.statuses.update(other.statuses)
        self.failures.extend(other.failures)


def _fixed_path(operation: Any, mode: GenerationMode, known: dict[str, str]) -> dict[str, str]:
    """Path parameters that name something real: the tenant (its public routes), and in the
    positive mode the seeded subject, so those requests reach past "not found"."""
    names = {p.name for p in operation.path_parameters}
    fixed = {"tenant": known["tenant"]} if "tenant" in names else {}
    if mode is GenerationMode.POSITIVE and "hashed_id" in names:
        fixed["hashed_id"] = known["hashed_id"]
    return fixed


def _breakable(raw: dict[str, Any]) -> bool:
    """Whether a request can break this operation's schema: a body or a query parameter can;
    an unconstrained string in the path cannot (every path segment is a string), and asking
    Hypothesis for one anyway costs seconds before it gives up."""
    if "requestBody" in raw:
        return True
    for param in raw.get("parameters", []):
        schema = param.get("schema", {})
        if param["in"] != "path" or set(schema) - {"type", "title", "description"}:
            return True
        if schema.get("type") != "string":
            return True
    return False


def _exercise(
    live: LiveApi, operation: Any, mode: GenerationMode, key: str, known: dict[str, str]
) -> Tally:
    tally = Tally()
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {key}"
    state = {"digest": live.digest()}
    label = f"{operation.label} [{mode.value}]"

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=not full(),  # make test: the same cases every run; full: new ones
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(mode, path_parameters=_fixed_path(operation, mode, known)))
    def run(case: schemathesis.Case) -> None:
        response = case.call(base_url=live.url, session=session, timeout=30)
        tally.calls += 1
        tally.statuses[response.status_code] += 1
        after = live.digest()
        before, state["digest"] = state["digest"], after
        where = f"{label}: {case.as_curl_command(headers={'Authorization': '[key]'})}"
        if response.status_code >= 500:
            tally.failures.append(f"{response.status_code} on {where}\n  {response.text[:300]}")
            return
        if response.status_code >= 400:
            tally.refused += 1
            changed = changed_tables(before, after)
            if changed:
                tally.failures.append(f"{response.status_code} changed {changed} on {where}")
            kind = (response.headers.get("content-type") or [""])[0]
            if not kind.startswith("application/problem+json"):
                tally.failures.append(f"{response.status_code} as {kind!r}, not a problem: {where}")
        try:
            case.validate_response(response, checks=CHECKS)
        except (AssertionError, FailureGroup) as exc:
            tally.failures.append(f"schema mismatch on {where}\n  {str(exc)[:600]}")

    try:
        run()
    except Unsatisfiable:
        if mode is GenerationMode.POSITIVE:  # (nothing to break: no parameters, no body)
            tally.failures.append(f"{label}: no request fits the schema")
    except Exception:  # trouble generating cases is a finding too: say where
        tally.failures.append(f"{label}: {traceback.format_exc(limit=-4)}")
    finally:
        session.close()
    return tally


def test_no_5xx_and_refusals_change_nothing(live_api: LiveApi) -> None:
    owner = live_api.tenant("fuzz")
    with live_api.client(owner["api_key"]) as http:
        # Something to find: a subject with history, so reads reach past "not found".
        seeded = http.post(
            "/v1/consent-events",
            json={
                "consent_id": "fuzz-seed-1",
                "phone": "+447911100001",
                "consent_type": "marketing_rcs",
                "status": "granted",
                "timestamp": "2026-01-05T10:00:00Z",
                "cmp_version": "fuzz",
                "source": "web",
            },
        )
        assert seeded.status_code == 201, seeded.text
    known = {"tenant": owner["tenant"], "hashed_id": seeded.json()["hashed_id"]}
    doc = httpx.get(f"{live_api.url}/openapi.json").json()
    schema = schemathesis.openapi.from_dict(doc)
    total = Tally()
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        modes = [GenerationMode.POSITIVE]
        if _breakable(doc["paths"][operation.path][operation.method.lower()]):
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:
            total.add(_exercise(live_api, operation, mode, owner["api_key"], known))
        assert live_api.healthy(), f"the server is down after {operation.label}"
    line = report(
        f"schemathesis on {live_api.backend}: {operations} operations, {total.calls} requests, "
        f"{total.refused} refused (4xx) with the database unchanged checked after each, "
        f"{len(total.failures)} failures; by status {dict(sorted(total.statuses.items()))}"
    )
    assert operations >= 40, line
    assert total.calls >= operations, line
    assert not total.failures, "\n".join([line, *total.failures[:40]])


def test_the_schema_names_only_what_it_defines(live_api: LiveApi) -> None:
    """Every reference resolves (schemathesis skips what does not, silently in Python), and
    every documented error is a problem document."""
    doc = httpx.get(f"{live_api.url}/openapi.json").json()
    defined = set(doc["components"]["schemas"])
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(doc)))
    assert refs <= defined, f"dangling: {sorted(refs - defined)}"
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if status.startswith("4"):
                    assert list(response["content"]) == ["application/problem+json"], (
                        f"{method.upper()} {path} {status}"
                    )
