"""docs/alerts.yml against a live ``consentgate serve``: every metric a rule names is exported
by /metrics (with the labels the rule matches on, where the scrape has a sample), and every
rule is complete and points at a section of docs/operations.md that exists."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from consentgate.bootstrap import App
from tests.e2e.conftest import Server

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "docs" / "alerts.yml"
GUIDE = ROOT / "docs" / "operations.md"
METRIC = re.compile(r"\b(consentgate_[a-z0-9_]+)\b(\{[^}]*\})?")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"')
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "summary": ("_sum", "_count", "_created", ""),
}


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    found = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^a-z0-9 _-]", "", title).replace(" ", "-"))
    return found


def test_rules_are_complete_and_point_at_the_guide() -> None:
    rules = _rules()
    assert len(rules) >= 10
    anchors = _anchors(GUIDE.read_text())
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        page, _, anchor = rule["annotations"]["runbook"].partition("#")
        assert page == "docs/operations.md", rule["alert"]
        assert anchor in anchors, f"{rule['alert']}: no section #{anchor} in the guide"
        expr = rule["expr"]
        for left, right in ("()", "{}", "[]"):
            assert expr.count(left) == expr.count(right), rule["alert"]
        assert METRIC.search(expr), f"{rule['alert']} names no consentgate metric"


@pytest.mark.parametrize("backend", ["sqlite"])
def test_every_metric_a_rule_names_is_exported(server: Server, core: App) -> None:
    created = core.tenants.create("acme", "GB")  # in this process, on the server's store
    with server.client(created["api_key"]) as http:
        # Some traffic, so labelled families have samples whose label names can be checked.
        event = {
            "consent_id": "alert-rules-1",
            "phone": "+447911100041",
            "consent_type": "marketing_rcs",
            "status": "granted",
            "timestamp": "2026-10-01T10:00:00Z",
            "cmp_version": "1",
            "source": "web",
        }
        assert http.post("/v1/consent-events", json=event).status_code == 201
        assert http.post("/v1/consents/lookup", json={"phone": "+447911100041"}).is_success
        scrape = http.get("/metrics")
    assert scrape.status_code == 200
    exported: dict[str, set[str] | None] = {}  # sample name → label names (None: no sample)
    for family in text_string_to_metric_families(scrape.text):
        for suffix in SUFFIXES.get(family.type, ("",)):
            exported.setdefault(family.name + suffix, None)
        for sample in family.samples:
            labels = set(sample.labels) - {"le", "quantile"}
            exported[sample.name] = (exported.get(sample.name) or set()) | labels
    assert exported.get("consentgate_store_up") is not None  # the store answered the scrape
    checked = set()
    for rule in _rules():
        for name, selector in METRIC.findall(rule["expr"]):
            assert name in exported, f"{rule['alert']}: {name} is not exported by /metrics"
            checked.add(name)
            labels = exported[name]
            if selector and labels is not None:
                for label, _op in MATCHER.findall(selector):
                    assert label in labels, f"{rule['alert']}: {name} has no label {label!r}"
    # The lookup route the latency alert watches is labelled as the rule spells it.
    assert 'route="/v1/consents/lookup"' in scrape.text
    assert len(checked) >= 8
