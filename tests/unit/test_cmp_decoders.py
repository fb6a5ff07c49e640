"""TC and GPP decoders vs IAB's reference encoders (tests/fixtures/cmp/generate/README.md),
hand-built bit strings for what those encoders never write, and fuzzing."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consentgate.cmp.bits import BitReader, CmpStringError, IdSet
from consentgate.cmp.gpp import GPPSection, UsNatSection, decode_gpp_string
from consentgate.cmp.tcf import TCString, decode_tc_string

FIXTURES = json.loads(
    (Path(__file__).parents[1] / "fixtures" / "cmp" / "cmp_fixtures.json").read_text("utf-8")
)
TCF = [f for f in FIXTURES if f["kind"] == "tcf"]
GPP = [f for f in FIXTURES if f["kind"] == "gpp"]
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"  # base64url
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def stored(iso: str) -> datetime:
    """What a TC string holds for a JS Date: Math.round(ms / 100) deciseconds."""
    millis = (datetime.fromisoformat(iso) - EPOCH) // timedelta(milliseconds=1)
    return EPOCH + timedelta(milliseconds=100 * math.floor(millis / 100 + 0.5))


def b64(bits: str) -> str:
    bits += "0" * (-len(bits) % 6)
    return "".join(B64[int(bits[i : i + 6], 2)] for i in range(0, len(bits), 6))


def uint(value: int, width: int) -> str:
    return format(value, f"0{width}b")


# value:width for version, created, last updated, CMP id and version, consent screen, language
# "EE", vendor list version, policy version, service-specific, non-standard texts, special
# features + purposes + LI + purpose one treatment, publisher country "AA".
CORE_PREFIX = "2:6 16000000000:36 16000000000:36 7:12 7:12 1:6 4:6 4:6 10:12 4:6 1:1 0:1 0:61 0:12"
NO_VENDORS = (uint(0, 16) + "0") * 2  # consents and LI: MaxVendorId 0, bit field


def core_bits(*, vendors: str = NO_VENDORS, restrictions: str = "0" * 12) -> str:
    """A minimal valid core segment; vendor sections and restrictions can be swapped in."""
    fields = (item.split(":") for item in CORE_PREFIX.split())
    return "".join(uint(int(v), int(w)) for v, w in fields) + vendors + restrictions


def range_section(entries: list[tuple[int, int]]) -> str:
    bits = uint(65535, 16) + "1" + uint(len(entries), 12)
    for start, end in entries:
        bits += ("0" + uint(start, 16)) if start == end else ("1" + uint(start, 16) + uint(end, 16))
    return bits


def raises(decode: Callable[[str], object], text: str, same_as: object = None) -> bool:
    """Whether ``decode`` raised CmpStringError (others propagate); else check ``same_as``."""
    try:
        result = decode(text)
    except CmpStringError:
        return True
    assert same_as is None or result == same_as
    return False


def vendor_encodings(encoded: str) -> tuple[str, str]:
    """Which encoding ("range"/"bitfield") the vendor consents and LI sections use."""
    r = BitReader(encoded.split(".")[0], "TC string", "core segment")
    r.read_int(213, "fixed-width fields before the vendor consents section")
    kinds = []
    for _ in range(2):
        max_id, is_range = r.read_int(16, "max"), r.read_bool("range")
        kinds.append("range" if is_range else "bitfield")
        r.read_range_ids("entries") if is_range else r.read_int(max_id, "bits")
    return kinds[0], kinds[1]


# Encoder field name (camelCase in @iabtechlabtcf/core, PascalCase in @iabgpp/cmpapi) ->
# TCString attribute, where snake-casing the name is not enough.
RENAMED = {
    "publisher_country_code": "publisher_cc",
    "special_feature_optins": "special_feature_opt_ins",
    "use_non_standard_stacks": "use_non_standard_texts",
    "vendors_disclosed": "disclosed_vendors",
    "vendors_allowed": "allowed_vendors",
}
PUBLISHER_TC = {
    "publisher_consents": "purpose_consents",
    "publisher_legitimate_interests": "purpose_legitimate_interests",
    "num_custom_purposes": "num_custom_purposes",
    "publisher_custom_consents": "custom_purpose_consents",
    "publisher_custom_legitimate_interests": "custom_purpose_legitimate_interests",
}
OPTIONAL_SEGMENTS = {
    "vendorsDisclosed": "disclosed_vendors",
    "vendorsAllowed": "allowed_vendors",
    "publisherTC": "publisher_tc",
}
SECTION_IDS = {"tcfeuv2": 2, "uspv1": 6, "usnat": 7}


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def assert_tc_matches(tc: TCString, given_input: dict[str, Any]) -> None:
    """Every input field must be found on ``tc``; an unknown field fails the lookup."""
    # The GPP encoder always writes disclosed vendors and publisher TC, and no segment list.
    segments = given_input.get("segments", ["vendorsDisclosed", "publisherTC"])
    for segment, attr in OPTIONAL_SEGMENTS.items():
        assert (getattr(tc, attr) is None) == (segment not in segments), segment
    for key, value in given_input.items():
        name = snake(key)
        if name in {"segments", "gvl"}:  # gvl only feeds the language and versions checked here
            continue
        if name in {"created", "last_updated"}:
            assert getattr(tc, name) == stored(value), key
            continue
        if name == "publisher_restrictions":
            expected = [
                (r["purposeId"], r["restrictionType"], frozenset(r["vendorIds"])) for r in value
            ]
            assert sorted(tc.publisher_restrictions) == sorted(expected)
            continue
        holder: object = tc.publisher_tc if name in PUBLISHER_TC else tc
        attr = PUBLISHER_TC.get(name) or RENAMED.get(name, name)
        want = frozenset(value) if isinstance(value, list) else value
        if holder is None or getattr(holder, attr) is None:
            assert not want, f"{key} was set but its segment was not written"
        else:
            assert getattr(holder, attr) == want, key


@pytest.mark.parametrize("fixture", TCF, ids=[f["name"] for f in TCF])
def test_tc_fixture_decodes_to_its_input(fixture: dict[str, Any]) -> None:
    assert_tc_matches(decode_tc_string(fixture["encoded"]), fixture["input"])


def test_tc_fixtures_cover_the_cases_the_generator_promises() -> None:
    inputs = [f["input"] for f in TCF]
    encodings = [vendor_encodings(f["encoded"]) for f in TCF]
    assert len(TCF) >= 14
    assert {"range", "bitfield"} <= {consent for consent, _ in encodings}
    assert {"range", "bitfield"} <= {li for _, li in encodings}
    assert {4, 5} <= {i["policyVersion"] for i in inputs}
    assert {True, False} == {i["isServiceSpecific"] for i in inputs}
    assert {True, False} == {i["purposeOneTreatment"] for i in inputs}
    assert any(i["publisherRestrictions"] for i in inputs)
    assert {True, False} == {"publisherTC" in i["segments"] for i in inputs}
    assert any("vendorsAllowed" in i["segments"] for i in inputs)
    assert len({i["consentLanguage"] for i in inputs}) >= 4
    assert len({i["cmpId"] for i in inputs}) >= 4


def assert_usnat_matches(usnat: UsNatSection, given_input: dict[str, Any]) -> None:
    expected = {k: v for k, v in given_input.items() if k not in {"GpcSegmentIncluded", "Gpc"}}
    # The encoder always holds 16 + 3 list values; version 1 writes the first 12 + 2.
    sensitive, child = (12, 2) if expected["Version"] == 1 else (16, 3)
    expected["SensitiveDataProcessing"] = tuple(expected["SensitiveDataProcessing"][:sensitive])
    kids = expected["KnownChildSensitiveDataConsents"]
    expected["KnownChildSensitiveDataConsents"] = tuple(kids[:child])
    if given_input["GpcSegmentIncluded"]:
        expected["Gpc"] = given_input["Gpc"]
    assert usnat.fields == expected
    assert usnat.sale_opt_out == expected["SaleOptOut"]


@pytest.mark.parametrize("fixture", GPP, ids=[f["name"] for f in GPP])
def test_gpp_fixture_decodes_to_its_input(fixture: dict[str, Any]) -> None:
    given_input = fixture["input"]
    gpp = decode_gpp_string(fixture["encoded"])
    assert (gpp.version, gpp.section_ids) == (1, tuple(sorted(SECTION_IDS[n] for n in given_input)))
    assert [s.raw for s in gpp.sections] == fixture["encoded"].split("~")[1:]
    assert (gpp.tcfeuv2 is None) == ("tcfeuv2" not in given_input)
    assert (gpp.usnat is None) == ("usnat" not in given_input)
    if gpp.tcfeuv2 is not None:
        assert_tc_matches(gpp.tcfeuv2, given_input["tcfeuv2"])
    if gpp.usnat is not None:
        assert_usnat_matches(gpp.usnat, given_input["usnat"])
    if usp := given_input.get("uspv1"):
        raw = f"1{usp['Notice']}{usp['OptOutSale']}{usp['LspaCovered']}"
        assert gpp.section(6) == GPPSection(6, "uspv1", raw, None)


def test_gpp_fixtures_cover_sections_alone_and_together() -> None:
    combos = {tuple(sorted(f["input"])) for f in GPP}
    assert {("tcfeuv2",), ("usnat",), ("tcfeuv2", "usnat")} <= combos
    usnat_inputs = [f["input"]["usnat"] for f in GPP if "usnat" in f["input"]]
    assert {True, False} == {u["GpcSegmentIncluded"] for u in usnat_inputs}
    assert {0, 1, 2} == {u["SaleOptOut"] for u in usnat_inputs}
    assert {1, 2} == {u["Version"] for u in usnat_inputs}


@pytest.mark.parametrize(
    ("header", "ids_in_header", "extra"),
    [("DBABM", (2,), ""), ("DBACNY", (2, 6), "~1YNN"), ("DBABjw", (5, 6), "~1YNN")],
)
def test_gpp_spec_header_examples(header: str, ids_in_header: tuple[int, ...], extra: str) -> None:
    # The spec's examples pad the header to 6 bits only; the reference encoder pads to a byte.
    tc = "CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA"
    gpp = decode_gpp_string(f"{header}~{tc}{extra}")
    assert gpp.section_ids == ids_in_header
    assert gpp.sections[0].raw == tc
    assert isinstance(gpp.sections[0].decoded, TCString) == (ids_in_header[0] == 2)


# -- malformed input ---------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", TCF, ids=[f["name"] for f in TCF])
def test_truncated_core_segment_is_rejected_until_only_padding_is_missing(
    fixture: dict[str, Any],
) -> None:
    core = fixture["encoded"].split(".")[0]
    whole = decode_tc_string(core)
    decodes = [not raises(decode_tc_string, core[:cut], whole) for cut in range(len(core))]
    # Once a prefix decodes, every longer one does, to the same value; padding is < 4 chars.
    first_ok = decodes.index(True) if True in decodes else len(core)
    assert all(decodes[first_ok:])
    assert first_ok >= len(core) - 3


@pytest.mark.parametrize("fixture", FIXTURES, ids=[f["name"] for f in FIXTURES])
def test_every_cut_of_a_whole_string_decodes_or_raises_cmp_error(fixture: dict[str, Any]) -> None:
    decode = decode_tc_string if fixture["kind"] == "tcf" else decode_gpp_string
    encoded = fixture["encoded"]
    failures = sum(raises(decode, encoded[:cut]) for cut in range(len(encoded)))
    assert failures >= len(encoded) // 2


@pytest.mark.parametrize("bad", ["CP60+aC", "CP60/aC", "CP60aC==", "CP60 aC", "CPé0", "CP\n"])
def test_non_base64url_characters_are_rejected(bad: str) -> None:
    with pytest.raises(CmpStringError, match="invalid base64url character"):
        decode_tc_string(bad)
    with pytest.raises(CmpStringError, match="invalid base64url character"):
        decode_gpp_string(f"DBABM~{bad}")


def test_range_entry_ending_before_it_starts_is_rejected() -> None:
    sections = range_section([(1, 3), (10, 5)]) + range_section([])
    with pytest.raises(CmpStringError, match="range entry ends at 5 before it starts at 10"):
        decode_tc_string(b64(core_bits(vendors=sections)))


def test_hand_built_core_with_overlapping_ranges_and_restrictions() -> None:
    sections = range_section([(5, 10), (1, 6), (8, 8)]) + uint(3, 16) + "0" + "101"
    restrictions = uint(1, 12) + uint(2, 6) + uint(1, 2) + uint(2, 12) + "0" + uint(9, 16)
    restrictions += "1" + uint(20, 16) + uint(22, 16)
    tc = decode_tc_string(b64(core_bits(vendors=sections, restrictions=restrictions)))
    assert tc.vendor_consents == frozenset(range(1, 11))
    assert tc.vendor_legitimate_interests == {1, 3}
    assert tc.publisher_restrictions == ((2, 1, frozenset({9, 20, 21, 22})),)
    assert (tc.consent_language, tc.publisher_cc, tc.policy_version) == ("EE", "AA", 4)
    assert tc.created == EPOCH + timedelta(seconds=1_600_000_000)


def test_worst_case_sizes_decode_quickly() -> None:
    # A 65535-bit vendor bit field, then 4095 restrictions (the 12-bit maximum) each naming
    # every possible vendor id: 140k bits, far past the reader's window.
    flags = "".join("1" if i in {1, 4097, 40000, 65535} else "0" for i in range(1, 65536))
    vendors = uint(65535, 16) + "0" + flags + range_section([(7, 9)])
    one = uint(1, 6) + uint(0, 2) + uint(1, 12) + "1" + uint(1, 16) + uint(65535, 16)
    started = time.process_time()
    tc = decode_tc_string(b64(core_bits(vendors=vendors, restrictions=uint(4095, 12) + one * 4095)))
    assert time.process_time() - started < 2
    assert tc.vendor_consents == {1, 4097, 40000, 65535}
    assert tc.vendor_legitimate_interests == {7, 8, 9} and len(tc.publisher_restrictions) == 4095
    assert tc.publisher_restrictions[-1].vendor_ids == frozenset(range(1, 65536))


@settings(max_examples=200, deadline=None)
@given(st.sets(st.integers(1, 65535), max_size=200), st.sets(st.integers(1, 3000)), st.booleans())
def test_random_vendor_sets_decode_exactly(consents: set[int], li: set[int], bits: bool) -> None:
    top = max(li, default=0)
    li_field = uint(top, 16) + "0" + "".join("1" if i in li else "0" for i in range(1, top + 1))
    li_ranges = range_section(IdSet(li).spans())
    vendors = range_section(IdSet(consents).spans()) + (li_field if bits else li_ranges)
    tc = decode_tc_string(b64(core_bits(vendors=vendors)))
    assert tc.vendor_consents == consents and tc.vendor_legitimate_interests == li


def test_id_set_is_a_read_only_set_agreeing_with_frozenset() -> None:
    ids = IdSet.from_spans([(5, 7), (1, 1), (6, 9)])
    assert ids == {1, 5, 6, 7, 8, 9} == IdSet([9, 8, 7, 6, 5, 1]) and ids != {1, 5}
    assert list(ids) == [1, 5, 6, 7, 8, 9] and len(ids) == 6 and ids.spans() == [(1, 1), (5, 9)]
    assert repr(ids) == "IdSet({1, 5-9})" and repr(IdSet()) == "IdSet({})"
    assert 5 in ids and 2 not in ids and -1 not in ids and "5" not in ids
    assert hash(ids) == hash(frozenset(ids)) and IdSet.from_mask(0b110) == {1, 2}
    assert ids & {1, 2} == {1} and {0} | ids == {0, 1, 5, 6, 7, 8, 9}


def test_consent_language_outside_a_to_z_is_rejected() -> None:
    bits = core_bits()
    bits = bits[:108] + uint(26, 6) + bits[114:]  # first consent language letter
    with pytest.raises(CmpStringError, match=r"letter code 26 is not A-Z \(consent language\)"):
        decode_tc_string(b64(bits))


CORE = TCF[0]["encoded"].split(".")[0]


@pytest.mark.parametrize(
    ("tc", "message"),
    [
        ("", "^empty TC string$"),
        ("A" + CORE[1:], "^unsupported TC string version 0$"),
        ("B" + CORE[1:], "^unsupported TC string version 1$"),
        ("D" + CORE[1:], "^unsupported TC string version 3$"),
        ("_" + CORE[1:], "^unsupported TC string version 63$"),
        (  # 36 chars = 216 bits: 3 of the vendor consents' 17-bit header
            CORE[:36],
            r"^TC string truncated in core segment at bit 213 \(vendor consents\): "
            r"needs 17 bits, 3 left$",
        ),
        (CORE + ".", "segment 2 is empty"),
        (CORE + ".AAAA", "unexpected segment type 0"),
        (CORE + ".gAAA", "unexpected segment type 4"),
        (CORE + ".IAAA.IAAA", "second disclosed vendors segment"),
        (CORE + ".YAAAAA", r"truncated in publisher TC segment \(segment 2\) at bit 27"),
    ],
)
def test_malformed_tc_strings_are_rejected(tc: str, message: str) -> None:
    with pytest.raises(CmpStringError, match=message):
        decode_tc_string(tc)


@pytest.mark.parametrize(
    ("gpp", "message"),
    [
        ("", "^empty GPP string$"),
        ("DBABM~CPXx~CPXx", "section ids don't match the 2 sections present"),
        ("DBACNY~1YNN", "section ids don't match the 1 sections present"),
        ("DBABM", "section ids don't match the 0 sections present"),
        ("DBABjw~1YNN~1YNN~1YNN", "section ids don't match the 3 sections present"),
        ("DBABM~", r"GPP section 1 \(id 2, tcfeuv2\) is empty"),
        ("CPXxRfAPXxRfA", "not a GPP string: header type is 2"),
        ("DCABM~1YNN", "unsupported GPP version 2"),
        ("DBA", "truncated in header at bit 12"),
        ("DBABAAAAAAAAAAAAAAAAA~x", "Fibonacci integer"),
        ("DBABLA~DVVVVVVVVVVk", "unsupported usnat version 3"),
        ("DBABLA~CVVmAAAAAABk.AA", "usnat subsection type 0 is not GPC"),
        ("DBABLA~CVVmAAAAAABk.YA.YA", "usnat section has 3 subsections"),
        ("DBABLA~CVVmAA", "usnat section truncated in core subsection at bit 36"),
        ("DBABM~BOEFEAyOEFEAyAHABDENAI4AAAB9vABAASA", r"\(id 2, tcfeuv2\): unsupported TC"),
    ],
)
def test_malformed_gpp_strings_are_rejected(gpp: str, message: str) -> None:
    with pytest.raises(CmpStringError, match=message):
        decode_gpp_string(gpp)


def test_gpp_unknown_sections_are_kept_raw_in_a_frozen_value() -> None:
    gpp = decode_gpp_string("DBABjw~opaque.section~1YNN")
    got = [(s.section_id, s.name, s.raw, s.decoded) for s in gpp.sections]
    assert got == [(5, "tcfcav1", "opaque.section", None), (6, "uspv1", "1YNN", None)]
    assert gpp.tcfeuv2 is None and gpp.usnat is None and gpp.section(7) is None
    with pytest.raises(AttributeError):
        gpp.version = 2  # type: ignore[misc]


# -- fuzz: any input decodes or raises CmpStringError, nothing else -----------------------------

FUZZ = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ENCODED = st.sampled_from([f["encoded"] for f in FIXTURES])


def decodes_or_cmp_error(text: str) -> None:
    raises(decode_tc_string, text)
    raises(decode_gpp_string, text)


@FUZZ
@given(st.text() | st.text(alphabet=B64 + ".~", max_size=400))
def test_fuzz_arbitrary_and_base64url_text(text: str) -> None:
    for prefix in ("", "C", "DBA"):  # "C" starts a v2 TC string, "DBA" a GPP header
        decodes_or_cmp_error(prefix + text)


@FUZZ
@given(ENCODED, st.data())
def test_fuzz_truncated_and_mutated_fixtures(encoded: str, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(encoded)))
    decodes_or_cmp_error(encoded[:cut])
    index = data.draw(st.integers(0, len(encoded) - 1))
    char = data.draw(st.sampled_from(B64 + ".~"))
    decodes_or_cmp_error(encoded[:index] + char + encoded[index + 1 :])
    tail = data.draw(st.text(alphabet=B64, max_size=40))
    decodes_or_cmp_error(encoded[:cut] + tail)
