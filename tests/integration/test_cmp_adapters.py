"""TCF and GPP deliveries through the signed-webhook path, on both backends, with strings made
by IAB's reference encoders (tests/fixtures/cmp): expectations come from the encoder inputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from standardwebhooks import Webhook

from consentgate.bootstrap import App
from consentgate.domain.clock import FixedClock
from consentgate.errors import InvalidInput
from consentgate.storage.engine import read_tx
from consentgate.storage.tables import ledger_entries

FIXTURES = {
    f["name"]: f
    for f in json.loads(
        (Path(__file__).parents[1] / "fixtures" / "cmp" / "cmp_fixtures.json").read_text()
    )
}
MAPPING = {"vendor_id": 30, "purposes": {"marketing_rcs": [1, 4], "analytics": [1, 8]}}


def _deliver(
    core: App, tenant: dict[str, Any], clock: FixedClock, adapter: str, payload: Any, msg_id: str
) -> Any:
    body = json.dumps(payload)
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(clock.now().timestamp())),
        "webhook-signature": Webhook(tenant["webhook_secret"]).sign(msg_id, clock.now(), body),
    }
    return core.cmp_webhooks.handle("acme", adapter, headers, body.encode())


def _leaves(core: App) -> list[dict[str, Any]]:
    with read_tx(core.engine) as conn:
        return [
            json.loads(bytes(r.leaf))
            for r in conn.execute(select(ledger_entries.c.leaf).order_by(ledger_entries.c.seq))
        ]


def _expected_tcf(inp: dict[str, Any], mapping: dict[str, Any]) -> dict[str, str]:
    """Straight from the encoder's input: every mapped purpose consented, the vendor consented,
    and no restriction of type 0 or 2 on that purpose for that vendor."""
    consents = set(inp.get("purposeConsents") or inp.get("PurposeConsents") or [])
    vendors = set(inp.get("vendorConsents") or inp.get("VendorConsents") or [])
    restricted = {
        r["purposeId"]
        for r in inp.get("publisherRestrictions", [])
        if mapping["vendor_id"] in r["vendorIds"] and r["restrictionType"] in (0, 2)
    }
    return {
        purpose: "granted"
        if mapping["vendor_id"] in vendors
        and all(i in consents and i not in restricted for i in ids)
        else "withdrawn"
        for purpose, ids in mapping["purposes"].items()
    }


TCF_CASES = [n for n, f in FIXTURES.items() if f["kind"] == "tcf"]


@pytest.mark.parametrize(
    "name",
    [
        "tcf_typical_range_consents_bitfield_li",
        "tcf_publisher_restrictions",
        "tcf_minimal_small_bitfields",
    ],
)
def test_tcf_string_becomes_one_event_per_mapped_purpose(
    core: App, tenant: dict[str, Any], clock: FixedClock, name: str
) -> None:
    fixture = FIXTURES[name]
    core.cmp_settings.put_mapping("acme", "tcf", MAPPING)
    outcome = _deliver(
        core,
        tenant,
        clock,
        "tcf",
        {"consent_id": "tc-1", "phone": "07911 123456", "tc_string": fixture["encoded"]},
        "m1",
    )
    assert outcome.status == 201
    leaves = _leaves(core)
    assert sorted(leaf["consent_type"] for leaf in leaves) == sorted(MAPPING["purposes"])
    expected = _expected_tcf(fixture["input"], MAPPING)
    for leaf in leaves:
        assert leaf["status"] == expected[leaf["consent_type"]]
        assert leaf["consent_id"] == f"tc-1:{leaf['consent_type']}"
        assert (
            leaf["cmp_version"]
            == f"tcf:{fixture['input']['cmpId']}:{fixture['input']['cmpVersion']}"
        )
        assert leaf["timestamp"].startswith(fixture["input"]["lastUpdated"][:19])
        assert leaf["evidence"]["string"] == fixture["encoded"]
        assert leaf["source"] == "web"


def test_every_tcf_fixture_is_accepted(
    core: App, tenant: dict[str, Any], clock: FixedClock
) -> None:
    core.cmp_settings.put_mapping("acme", "tcf", {"purposes": {"analytics": [1]}})
    now = clock.now().isoformat()
    for i, name in enumerate(TCF_CASES):
        payload = {
            "consent_id": f"f-{i}",
            "phone": "07911 123456",
            "tc_string": FIXTURES[name]["encoded"],
        }
        if FIXTURES[name]["input"]["lastUpdated"] > now:  # e.g. a 2031 string: in the future
            with pytest.raises(InvalidInput, match="future"):
                _deliver(core, tenant, clock, "tcf", payload, f"m{i}")
            continue
        assert _deliver(core, tenant, clock, "tcf", payload, f"m{i}").status == 201, name
    consents = {1 in set(FIXTURES[n]["input"]["purposeConsents"]) for n in TCF_CASES}
    assert consents == {True, False}  # the fixtures exercise both outcomes


def test_malformed_tc_string_is_a_422_and_records_nothing(
    core: App, tenant: dict[str, Any], clock: FixedClock
) -> None:
    core.cmp_settings.put_mapping("acme", "tcf", MAPPING)
    good = FIXTURES["tcf_typical_range_consents_bitfield_li"]["encoded"]
    for i, bad in enumerate([good[:20], good[:-30], "!!!" + good, "BOGUS.STRING", "A"]):
        with pytest.raises(InvalidInput) as info:
            _deliver(
                core,
                tenant,
                clock,
                "tcf",
                {"consent_id": "x", "phone": "07911 123456", "tc_string": bad},
                f"bad{i}",
            )
        assert info.value.field == "tc_string"
    assert _leaves(core) == []


def test_gpp_usnat_opt_outs_only_withdraw(
    core: App, tenant: dict[str, Any], clock: FixedClock
) -> None:
    core.cmp_settings.put_mapping(
        "acme",
        "gpp",
        {
            "usnat": {
                "SaleOptOut": ["marketing_rcs"],
                "TargetedAdvertisingOptOut": ["marketing_rcs", "personalization"],
            }
        },
    )
    opted_out = FIXTURES["gpp_usnat_only_opted_out"]
    outcome = _deliver(
        core,
        tenant,
        clock,
        "gpp",
        {
            "consent_id": "g-1",
            "phone": "+1 650 253 0000",
            "gpp_string": opted_out["encoded"],
            "timestamp": "2026-11-01T10:00:00Z",
        },
        "g1",
    )
    assert outcome.status == 201
    leaves = _leaves(core)
    assert {(x["consent_type"], x["status"]) for x in leaves} == {
        ("marketing_rcs", "withdrawn"),
        ("personalization", "withdrawn"),
    }
    not_out = FIXTURES["gpp_usnat_gpc_false"]  # SaleOptOut 2, TargetedAdvertisingOptOut 2
    assert not_out["input"]["usnat"]["SaleOptOut"] == 2
    quiet = _deliver(
        core,
        tenant,
        clock,
        "gpp",
        {
            "consent_id": "g-2",
            "phone": "+1 650 253 0000",
            "gpp_string": not_out["encoded"],
            "timestamp": "2026-11-01T10:00:00Z",
        },
        "g2",
    )
    assert quiet.status == 200 and quiet.body == {"events": []}
    assert len(_leaves(core)) == 2


def test_gpp_with_tcfeuv2_uses_the_tcf_mapping(
    core: App, tenant: dict[str, Any], clock: FixedClock
) -> None:
    core.cmp_settings.put_mapping(
        "acme", "tcf", {"vendor_id": 30, "purposes": {"analytics": [1, 8]}}
    )
    core.cmp_settings.put_mapping("acme", "gpp", {"usnat": {"SaleOptOut": ["marketing_rcs"]}})
    fixture = FIXTURES["gpp_tcfeuv2_and_usnat"]
    outcome = _deliver(
        core,
        tenant,
        clock,
        "gpp",
        {
            "consent_id": "g-3",
            "phone": "07911 123456",
            "gpp_string": fixture["encoded"],
            "timestamp": "2026-11-01T10:00:00Z",
        },
        "g3",
    )
    assert outcome.status == 201
    by_type = {leaf["consent_type"]: leaf for leaf in _leaves(core)}
    tcf_in = fixture["input"]["tcfeuv2"]
    expected = (
        "granted"
        if 30 in tcf_in["VendorConsents"] and {1, 8} <= set(tcf_in["PurposeConsents"])
        else "withdrawn"
    )
    assert by_type["analytics"]["status"] == expected
    assert by_type["analytics"]["consent_id"] == "g-3:tcfeuv2:analytics"
    sale = fixture["input"]["usnat"]["SaleOptOut"]
    assert ("marketing_rcs" in by_type) == (sale == 1)


@pytest.mark.parametrize(
    ("adapter", "mapping", "field"),
    [
        ("tcf", {"purposes": {"nope": [1]}}, "purposes.nope"),
        ("tcf", {"purposes": {"analytics": [12]}}, "purposes.analytics"),
        ("tcf", {"vendor_id": -1, "purposes": {"analytics": [1]}}, "vendor_id"),
        ("tcf", {"purposes": {}}, "purposes"),
        ("gpp", {"usnat": {"SharingNotice": ["analytics"]}}, "usnat.SharingNotice"),
        ("gpp", {"usnat": {"SaleOptOut": ["nope"]}}, "usnat.SaleOptOut"),
        ("nope", {}, "adapter"),
    ],
)
def test_bad_mappings_are_refused(
    core: App, tenant: dict[str, Any], adapter: str, mapping: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidInput) as info:
        core.cmp_settings.put_mapping("acme", adapter, mapping)
    assert info.value.field == field


def test_tcf_without_mapping_is_refused(
    core: App, tenant: dict[str, Any], clock: FixedClock
) -> None:
    with pytest.raises(InvalidInput, match="mapping"):
        _deliver(
            core,
            tenant,
            clock,
            "tcf",
            {
                "consent_id": "x",
                "phone": "07911 123456",
                "tc_string": FIXTURES[TCF_CASES[0]]["encoded"],
            },
            "m",
        )
