"""Decoding of IAB TCF v2 Transparency and Consent strings (TC string format version 2).

This module owns the TC string layout of the IAB Tech Lab "Transparency and Consent String
with Global Vendor & CMP List Formats" v2.2: the core segment with its bit-field or range
encoded vendor sections and publisher restrictions, and the optional segments that follow a
"." (disclosed vendors, the legacy allowed vendors, publisher TC). It turns a string into
immutable :class:`TCString` values and nothing else: whether a policy version is still
acceptable, or what a signal means for a purpose, is for the caller to decide.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from consentgate.cmp.bits import BitReader, CmpStringError, IdSet

__all__ = ["PublisherRestriction", "PublisherTC", "TCString", "decode_tc_string"]

_WHAT = "TC string"
_SEGMENT_NAMES = {
    1: "disclosed vendors segment",
    2: "allowed vendors segment",
    3: "publisher TC segment",
}


class PublisherRestriction(NamedTuple):
    """One restriction: for ``purpose_id``, ``restriction_type`` applies to these vendors.

    Restriction types per the spec: 0 not allowed, 1 require consent, 2 require legitimate
    interest, 3 undefined (kept as read).
    """

    purpose_id: int
    restriction_type: int
    vendor_ids: IdSet


@dataclass(frozen=True, slots=True)
class PublisherTC:
    """The publisher TC segment (segment type 3): the publisher's own purposes."""

    purpose_consents: IdSet
    purpose_legitimate_interests: IdSet
    num_custom_purposes: int
    custom_purpose_consents: IdSet
    custom_purpose_legitimate_interests: IdSet


@dataclass(frozen=True, slots=True)
class TCString:
    """A decoded TC string.

    Id fields are :class:`IdSet` read-only sets of vendor, purpose or special feature ids.
    ``created`` and ``last_updated`` are UTC datetimes at the format's decisecond precision.
    ``policy_version`` is kept as read: 2 for TCF v2.0 strings, 4 for v2.2, 5 for the policy
    published after it. Optional segments are ``None`` when absent from the string.
    """

    version: int
    created: datetime
    last_updated: datetime
    cmp_id: int
    cmp_version: int
    consent_screen: int
    consent_language: str
    vendor_list_version: int
    policy_version: int
    is_service_specific: bool
    use_non_standard_texts: bool
    special_feature_opt_ins: IdSet
    purpose_consents: IdSet
    purpose_legitimate_interests: IdSet
    purpose_one_treatment: bool
    publisher_cc: str
    vendor_consents: IdSet
    vendor_legitimate_interests: IdSet
    publisher_restrictions: tuple[PublisherRestriction, ...]
    disclosed_vendors: IdSet | None = None
    allowed_vendors: IdSet | None = None
    publisher_tc: PublisherTC | None = None


def decode_tc_string(s: str) -> TCString:
    """Decode a TCF v2 TC string (core segment, optionally followed by "."-joined segments).

    Raises :class:`CmpStringError` for anything that is not a well-formed version 2 string.
    """
    if not s:
        raise CmpStringError("empty TC string")
    core_text, *segment_texts = s.split(".")
    r = BitReader(core_text, _WHAT, "core segment")
    version = r.read_int(6, "version")
    if version != 2:
        raise CmpStringError(f"unsupported {_WHAT} version {version}")
    extra = _read_optional_segments(segment_texts)
    # Keyword arguments are evaluated left to right, which is the order of the fields on the
    # wire: keep them in spec order.
    return TCString(
        version=version,
        created=r.read_datetime("created"),
        last_updated=r.read_datetime("last updated"),
        cmp_id=r.read_int(12, "CMP id"),
        cmp_version=r.read_int(12, "CMP version"),
        consent_screen=r.read_int(6, "consent screen"),
        consent_language=r.read_letters(2, "consent language"),
        vendor_list_version=r.read_int(12, "vendor list version"),
        policy_version=r.read_int(6, "policy version"),
        is_service_specific=r.read_bool("is service specific"),
        use_non_standard_texts=r.read_bool("use non-standard texts"),
        special_feature_opt_ins=r.read_bitfield(12, "special feature opt-ins"),
        purpose_consents=r.read_bitfield(24, "purpose consents"),
        purpose_legitimate_interests=r.read_bitfield(24, "purpose legitimate interests"),
        purpose_one_treatment=r.read_bool("purpose one treatment"),
        publisher_cc=r.read_letters(2, "publisher country code"),
        vendor_consents=_read_vendor_section(r, "vendor consents"),
        vendor_legitimate_interests=_read_vendor_section(r, "vendor legitimate interests"),
        publisher_restrictions=_read_publisher_restrictions(r),
        disclosed_vendors=extra.disclosed_vendors,
        allowed_vendors=extra.allowed_vendors,
        publisher_tc=extra.publisher_tc,
    )


class _OptionalSegments(NamedTuple):
    disclosed_vendors: IdSet | None
    allowed_vendors: IdSet | None
    publisher_tc: PublisherTC | None


def _read_optional_segments(texts: list[str]) -> _OptionalSegments:
    """Read the segments after the core one; each starts with a 3-bit segment type."""
    disclosed = allowed = None
    publisher = None
    seen: set[int] = set()
    for number, text in enumerate(texts, start=2):
        if not text:
            raise CmpStringError(f"{_WHAT} segment {number} is empty")
        r = BitReader(text, _WHAT, f"segment {number}")
        segment_type = r.read_int(3, "segment type")
        name = _SEGMENT_NAMES.get(segment_type)
        if name is None:
            # Type 0 is the core segment, which only ever comes first; 4 to 7 are undefined.
            raise CmpStringError(
                f"{_WHAT} segment {number} has unexpected segment type {segment_type}"
            )
        if segment_type in seen:
            raise CmpStringError(f"{_WHAT} has a second {name} (segment {number})")
        seen.add(segment_type)
        r.where = f"{name} (segment {number})"
        if segment_type == 1:
            disclosed = _read_vendor_section(r, "disclosed vendors")
        elif segment_type == 2:
            # Allowed vendors belonged to the out-of-band mechanism that TCF v2.2 removed;
            # strings written before that may still carry it, so it is decoded, not refused.
            allowed = _read_vendor_section(r, "allowed vendors")
        else:
            publisher = _read_publisher_tc(r)
    return _OptionalSegments(disclosed, allowed, publisher)


def _read_vendor_section(r: BitReader, field: str) -> IdSet:
    """MaxVendorId(16), IsRangeEncoding(1), then a MaxVendorId-bit field or range entries."""
    header = r.read_int(17, field)
    if header & 1:
        return r.read_range_ids(field)
    return r.read_bitfield(header >> 1, field)


def _read_publisher_restrictions(r: BitReader) -> tuple[PublisherRestriction, ...]:
    field = "publisher restrictions"
    restrictions = []
    for _ in range(r.read_int(12, field)):
        purpose_id = r.read_int(6, field)
        restriction_type = r.read_int(2, field)
        vendor_ids = r.read_range_ids(field)
        restrictions.append(PublisherRestriction(purpose_id, restriction_type, vendor_ids))
    return tuple(restrictions)


def _read_publisher_tc(r: BitReader) -> PublisherTC:
    consents = r.read_bitfield(24, "publisher purpose consents")
    legitimate_interests = r.read_bitfield(24, "publisher purpose legitimate interests")
    num_custom = r.read_int(6, "number of custom purposes")
    return PublisherTC(
        purpose_consents=consents,
        purpose_legitimate_interests=legitimate_interests,
        num_custom_purposes=num_custom,
        custom_purpose_consents=r.read_bitfield(num_custom, "custom purpose consents"),
        custom_purpose_legitimate_interests=r.read_bitfield(
            num_custom, "custom purpose legitimate interests"
        ),
    )
