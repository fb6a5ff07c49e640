"""Decoding of IAB Global Privacy Platform (GPP) strings, version 1.

This module owns the GPP string envelope: the header section (type 3, version 1, section ids
as a Fibonacci-coded range), splitting the "~"-joined sections in header order, and decoding
the two sections consentgate acts on: ``tcfeuv2`` (id 2, a TCF v2 TC string, delegated to
:mod:`consentgate.cmp.tcf`) and ``usnat`` (id 7, the MSPA US National section with its
optional GPC subsection). Any other section is kept as its id and raw text, undecoded.
"""

from __future__ import annotations

from dataclasses import dataclass

from consentgate.cmp.bits import BitReader, CmpStringError
from consentgate.cmp.tcf import TCString, decode_tc_string

__all__ = [
    "SECTION_NAMES",
    "TCFEUV2_ID",
    "USNAT_ID",
    "GPPSection",
    "GPPString",
    "UsNatSection",
    "decode_gpp_string",
]

# Client-side API prefixes from the GPP "Section Information" table.
SECTION_NAMES = {
    1: "tcfeuv1",
    2: "tcfeuv2",
    5: "tcfcav1",
    6: "uspv1",
    7: "usnat",
    8: "usca",
    9: "usva",
    10: "usco",
    11: "usut",
    12: "usct",
    13: "usfl",
    14: "usmt",
    15: "usor",
    16: "ustx",
    17: "usde",
    18: "usia",
    19: "usne",
    20: "usnh",
    21: "usnj",
    22: "ustn",
    23: "usmn",
    24: "usmd",
    25: "usin",
    26: "usky",
    27: "usri",
}
TCFEUV2_ID = 2
USNAT_ID = 7

# Spec field name -> attribute, in wire order, for the usnat core subsection.
_USNAT_FIELDS = (
    ("Version", "version"),
    ("SharingNotice", "sharing_notice"),
    ("SaleOptOutNotice", "sale_opt_out_notice"),
    ("SharingOptOutNotice", "sharing_opt_out_notice"),
    ("TargetedAdvertisingOptOutNotice", "targeted_advertising_opt_out_notice"),
    ("SensitiveDataProcessingOptOutNotice", "sensitive_data_processing_opt_out_notice"),
    ("SensitiveDataLimitUseNotice", "sensitive_data_limit_use_notice"),
    ("SaleOptOut", "sale_opt_out"),
    ("SharingOptOut", "sharing_opt_out"),
    ("TargetedAdvertisingOptOut", "targeted_advertising_opt_out"),
    ("SensitiveDataProcessing", "sensitive_data_processing"),
    ("KnownChildSensitiveDataConsents", "known_child_sensitive_data_consents"),
    ("PersonalDataConsents", "personal_data_consents"),
    ("MspaCoveredTransaction", "mspa_covered_transaction"),
    ("MspaOptOutOptionMode", "mspa_opt_out_option_mode"),
    ("MspaServiceProviderMode", "mspa_service_provider_mode"),
)
# usnat version -> (SensitiveDataProcessing length, KnownChildSensitiveDataConsents length).
# Version 2 (the Second Amended MSPA) added four sensitive data categories and a third child
# age band.
_USNAT_LIST_LENGTHS = {1: (12, 2), 2: (16, 3)}

UsNatValue = int | bool | tuple[int, ...]


@dataclass(frozen=True, slots=True)
class UsNatSection:
    """The usnat (MSPA US National) section.

    Every value is the spec's 2-bit code as read: 0 not applicable, 1 and 2 as each field
    defines, and the undefined 3 is passed through for the caller to refuse.
    ``sensitive_data_processing`` has 12 entries in version 1 and 16 in version 2,
    ``known_child_sensitive_data_consents`` 2 and 3. ``gpc`` is ``None`` when the string has
    no GPC subsection. :attr:`fields` gives the same values under the spec's field names.
    """

    version: int
    sharing_notice: int
    sale_opt_out_notice: int
    sharing_opt_out_notice: int
    targeted_advertising_opt_out_notice: int
    sensitive_data_processing_opt_out_notice: int
    sensitive_data_limit_use_notice: int
    sale_opt_out: int
    sharing_opt_out: int
    targeted_advertising_opt_out: int
    sensitive_data_processing: tuple[int, ...]
    known_child_sensitive_data_consents: tuple[int, ...]
    personal_data_consents: int
    mspa_covered_transaction: int
    mspa_opt_out_option_mode: int
    mspa_service_provider_mode: int
    gpc: bool | None = None

    @property
    def fields(self) -> dict[str, UsNatValue]:
        """Values under their spec names ("SaleOptOut", ...); "Gpc" only with the subsection."""
        values: dict[str, UsNatValue] = {spec: getattr(self, attr) for spec, attr in _USNAT_FIELDS}
        if self.gpc is not None:
            values["Gpc"] = self.gpc
        return values


@dataclass(frozen=True, slots=True)
class GPPSection:
    """One section: its id, API prefix (``None`` if unknown), raw text and decoded form.

    ``decoded`` is a :class:`TCString` for tcfeuv2, a :class:`UsNatSection` for usnat and
    ``None`` for every other section.
    """

    section_id: int
    name: str | None
    raw: str
    decoded: TCString | UsNatSection | None = None


@dataclass(frozen=True, slots=True)
class GPPString:
    """A decoded GPP string: header version and sections in header (= string) order."""

    version: int
    sections: tuple[GPPSection, ...]

    @property
    def section_ids(self) -> tuple[int, ...]:
        return tuple(section.section_id for section in self.sections)

    def section(self, section_id: int) -> GPPSection | None:
        return next((s for s in self.sections if s.section_id == section_id), None)

    @property
    def tcfeuv2(self) -> TCString | None:
        section = self.section(TCFEUV2_ID)
        return section.decoded if section and isinstance(section.decoded, TCString) else None

    @property
    def usnat(self) -> UsNatSection | None:
        section = self.section(USNAT_ID)
        return section.decoded if section and isinstance(section.decoded, UsNatSection) else None


def decode_gpp_string(s: str) -> GPPString:
    """Decode a GPP string "header~section~section...".

    Raises :class:`CmpStringError` when the header is malformed, its section ids don't match
    the sections present, or a tcfeuv2 or usnat section cannot be decoded.
    """
    if not s:
        raise CmpStringError("empty GPP string")
    header_text, *section_texts = s.split("~")
    r = BitReader(header_text, "GPP string", "header")
    header_type = r.read_int(6, "header type")
    if header_type != 3:
        raise CmpStringError(f"not a GPP string: header type is {header_type}, expected 3")
    version = r.read_int(6, "GPP version")
    if version != 1:
        raise CmpStringError(f"unsupported GPP version {version}")
    section_ids = _read_section_ids(r, len(section_texts))
    sections = []
    for position, (section_id, text) in enumerate(zip(section_ids, section_texts, strict=True)):
        name = SECTION_NAMES.get(section_id)
        label = f"GPP section {position + 1} (id {section_id}{', ' + name if name else ''})"
        if not text:
            raise CmpStringError(f"{label} is empty")
        try:
            decoded = _decode_section(section_id, text)
        except CmpStringError as exc:
            raise CmpStringError(f"{label}: {exc}") from exc
        sections.append(GPPSection(section_id, name, text, decoded))
    return GPPString(version=version, sections=tuple(sections))


def _read_section_ids(r: BitReader, present: int) -> list[int]:
    """Read the header's Range(Fibonacci): a 12-bit count, then per entry IsARange(1) and
    Fibonacci offsets from the previous id (start) and from the start (end of a group).

    ``present`` bounds the expansion, so a crafted group cannot ask for millions of ids.
    """
    field = "section ids"
    ids: list[int] = []
    last = 0
    for _ in range(r.read_int(12, field)):
        is_group = r.read_bool(field)
        start = last + r.read_fibonacci_int(field)
        last = start + r.read_fibonacci_int(field) if is_group else start
        if len(ids) + last - start + 1 > present:
            raise CmpStringError(
                f"GPP header section ids don't match the {present} sections present "
                "(the header lists more)"
            )
        ids.extend(range(start, last + 1))
    if len(ids) != present:
        raise CmpStringError(
            f"GPP header section ids don't match the {present} sections present "
            f"(the header lists {len(ids)}: {ids})"
        )
    return ids


def _decode_section(section_id: int, text: str) -> TCString | UsNatSection | None:
    if section_id == TCFEUV2_ID:
        return decode_tc_string(text)
    if section_id == USNAT_ID:
        return _decode_usnat(text)
    return None


def _decode_usnat(text: str) -> UsNatSection:
    core_text, *subsections = text.split(".")
    if len(subsections) > 1:
        raise CmpStringError(f"usnat section has {len(subsections) + 1} subsections, at most 2")
    r = BitReader(core_text, "usnat section", "core subsection")
    version = r.read_int(6, "Version")
    lengths = _USNAT_LIST_LENGTHS.get(version)
    if lengths is None:
        raise CmpStringError(f"unsupported usnat version {version}")
    sensitive_count, child_count = lengths
    gpc = _read_gpc(subsections[0]) if subsections else None
    return UsNatSection(
        version=version,
        sharing_notice=r.read_int(2, "SharingNotice"),
        sale_opt_out_notice=r.read_int(2, "SaleOptOutNotice"),
        sharing_opt_out_notice=r.read_int(2, "SharingOptOutNotice"),
        targeted_advertising_opt_out_notice=r.read_int(2, "TargetedAdvertisingOptOutNotice"),
        sensitive_data_processing_opt_out_notice=r.read_int(
            2, "SensitiveDataProcessingOptOutNotice"
        ),
        sensitive_data_limit_use_notice=r.read_int(2, "SensitiveDataLimitUseNotice"),
        sale_opt_out=r.read_int(2, "SaleOptOut"),
        sharing_opt_out=r.read_int(2, "SharingOptOut"),
        targeted_advertising_opt_out=r.read_int(2, "TargetedAdvertisingOptOut"),
        sensitive_data_processing=r.read_int_list(sensitive_count, 2, "SensitiveDataProcessing"),
        known_child_sensitive_data_consents=r.read_int_list(
            child_count, 2, "KnownChildSensitiveDataConsents"
        ),
        personal_data_consents=r.read_int(2, "PersonalDataConsents"),
        mspa_covered_transaction=r.read_int(2, "MspaCoveredTransaction"),
        mspa_opt_out_option_mode=r.read_int(2, "MspaOptOutOptionMode"),
        mspa_service_provider_mode=r.read_int(2, "MspaServiceProviderMode"),
        gpc=gpc,
    )


def _read_gpc(text: str) -> bool:
    r = BitReader(text, "usnat section", "GPC subsection")
    subsection_type = r.read_int(2, "SubsectionType")
    if subsection_type != 1:
        raise CmpStringError(f"usnat subsection type {subsection_type} is not GPC (1)")
    return r.read_bool("Gpc")
