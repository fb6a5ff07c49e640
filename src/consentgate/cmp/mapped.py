"""The ``tcf`` and ``gpp`` adapters: decoded IAB strings to consent events, per the tenant's
mapping (pure: the mapping is passed in).

TCF: a consentgate purpose is *granted* when every TCF purpose mapped to it has consent, the
mapped vendor (if any) has consent, and no publisher restriction takes the purpose away from
that vendor (type 0 "not allowed", or type 2 "legitimate interest only", since a consent
purpose cannot rest on legitimate interest); otherwise it is *withdrawn*. One event per
mapped purpose, at the string's ``lastUpdated``.

GPP: a ``tcfeuv2`` section maps as above; in ``usnat`` a mapped opt-out field equal to 1
(opted out), or a true GPC signal, *withdraws* the listed purposes. US opt-out signals never
create a grant. The decoded string rides along in the leaf as evidence.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from consentgate.cmp.bits import CmpStringError
from consentgate.cmp.gpp import decode_gpp_string
from consentgate.cmp.tcf import TCString, decode_tc_string
from consentgate.consent.cmp_settings import GppMapping, TcfMapping
from consentgate.consent.ingest import EventInput
from consentgate.domain.timeutil import format_rfc3339
from consentgate.errors import InvalidInput

_NOT_FOR_CONSENT = {0, 2}  # restriction types: not allowed; legitimate interest only


class _Subject(BaseModel):
    model_config = ConfigDict(extra="forbid", str_max_length=1000)
    consent_id: str = Field(min_length=1, max_length=180)
    phone: str | None = None
    email: str | None = None
    hashed_phone: str | None = None
    source: str = "web"
    policy_version: str | None = Field(None, max_length=100)
    jurisdiction: str | None = Field(None, max_length=16)


class TcfPayload(_Subject):
    tc_string: str = Field(min_length=1, max_length=65536)


class GppPayload(_Subject):
    gpp_string: str = Field(min_length=1, max_length=65536)
    timestamp: str


def _event(
    p: _Subject, suffix: str, purpose: str, status: str, timestamp: str, evidence: dict[str, Any]
) -> EventInput:
    return EventInput(
        consent_id=f"{p.consent_id}:{suffix}",
        consent_type=purpose,
        status=status,
        timestamp=timestamp,
        source=p.source,
        phone=p.phone,
        email=p.email,
        hashed_id=p.hashed_phone,
        cmp_version=evidence.get("cmp"),
        policy_version=p.policy_version,
        jurisdiction=p.jurisdiction,
        evidence=evidence,
    )


def tcf_grants(tc: TCString, mapping: TcfMapping) -> dict[str, bool]:
    """consentgate purpose → granted? under ``mapping``."""
    vendor = mapping.vendor_id
    vendor_ok = vendor is None or vendor in tc.vendor_consents
    removed = {
        r.purpose_id
        for r in tc.publisher_restrictions
        if vendor is not None and vendor in r.vendor_ids and r.restriction_type in _NOT_FOR_CONSENT
    }
    return {
        purpose: vendor_ok and all(i in tc.purpose_consents and i not in removed for i in ids)
        for purpose, ids in mapping.purposes.items()
    }


def _tcf_evidence(tc: TCString, raw: str, section: str) -> dict[str, Any]:
    return {
        "format": section,
        "string": raw,
        "cmp": f"tcf:{tc.cmp_id}:{tc.cmp_version}",
        "tcf_policy_version": tc.policy_version,
        "vendor_list_version": tc.vendor_list_version,
    }


def _tcf_section_events(
    p: _Subject, tc: TCString, raw: str, mapping: TcfMapping, prefix: str, section: str
) -> list[EventInput]:
    evidence = _tcf_evidence(tc, raw, section)
    timestamp = format_rfc3339(tc.last_updated)
    return [
        _event(
            p,
            f"{prefix}{purpose}",
            purpose,
            "granted" if granted else "withdrawn",
            timestamp,
            evidence,
        )
        for purpose, granted in sorted(tcf_grants(tc, mapping).items())
    ]


def tcf_events(payload: Any, mapping: TcfMapping | None) -> list[EventInput]:
    p = TcfPayload.model_validate(payload)
    if mapping is None:
        raise InvalidInput(
            "no TCF mapping for this tenant: PUT /v1/cmp/tcf/mapping first", field="tc_string"
        )
    try:
        tc = decode_tc_string(p.tc_string)
    except CmpStringError as exc:
        raise InvalidInput(f"tc_string: {exc}", field="tc_string") from None
    return _tcf_section_events(p, tc, p.tc_string, mapping, "", "tcf")


def gpp_events(
    payload: Any, tcf_mapping: TcfMapping | None, gpp_mapping: GppMapping | None
) -> list[EventInput]:
    p = GppPayload.model_validate(payload)
    if tcf_mapping is None and gpp_mapping is None:
        raise InvalidInput(
            "no GPP or TCF mapping for this tenant: PUT /v1/cmp/gpp/mapping first",
            field="gpp_string",
        )
    try:
        gpp = decode_gpp_string(p.gpp_string)
    except CmpStringError as exc:
        raise InvalidInput(f"gpp_string: {exc}", field="gpp_string") from None
    events: list[EventInput] = []
    tc = gpp.tcfeuv2
    if tc is not None and tcf_mapping is not None:
        section = gpp.section(2)
        raw = section.raw if section is not None else ""
        events += _tcf_section_events(p, tc, raw, tcf_mapping, "tcfeuv2:", "gpp/tcfeuv2")
    usnat = gpp.usnat
    if usnat is not None and gpp_mapping is not None:
        values = usnat.fields
        withdrawn: dict[str, list[str]] = {}
        for field, purposes in sorted(gpp_mapping.usnat.items()):
            value = values.get(field)
            if value is True or (value == 1 and not isinstance(value, bool)):
                for purpose in purposes:
                    withdrawn.setdefault(purpose, []).append(field)
        section = gpp.section(7)
        for purpose, fields in sorted(withdrawn.items()):
            evidence = {
                "format": "gpp/usnat",
                "string": section.raw if section is not None else "",
                "opt_outs": fields,
            }
            events.append(
                _event(p, f"usnat:{purpose}", purpose, "withdrawn", p.timestamp, evidence)
            )
    return events
