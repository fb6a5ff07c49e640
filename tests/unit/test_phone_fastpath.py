"""The bulk phone normaliser gives exactly phonenumbers' answers (parse + is_possible_number
+ is_valid_number + E.164), whichever of its layers decides: the batch regex, the
per-number replay, or the full parse it falls back to."""

from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from phonenumbers import PhoneNumberFormat, PhoneNumberType

from consentgate.domain import phone_fastpath
from consentgate.domain.identity import normalise_phone, normalise_phone_bulk, normalise_phones
from consentgate.errors import InvalidInput

REGIONS = ["GB", "US", "DE", "FR", "IN", "IT", "BR", "AR", "MX", "GG", "CA", "RU", "JP", "AU"]
TYPES = [
    PhoneNumberType.MOBILE,
    PhoneNumberType.FIXED_LINE,
    PhoneNumberType.TOLL_FREE,
    PhoneNumberType.PREMIUM_RATE,
    PhoneNumberType.VOIP,
    PhoneNumberType.UAN,
]


def reference(raw: str, region: str | None) -> str | None:
    """What the service decided before the fast path: the full parse."""
    try:
        return normalise_phone(raw, region).value
    except InvalidInput:
        return None


def check(raws: list[str], region: str | None) -> None:
    want = [reference(raw, region) for raw in raws]
    got = normalise_phones(raws, region)
    assert got.values == want
    assert got.invalid == [i for i, w in enumerate(want) if w is None]
    batch = phone_fastpath.batch_path(region)(raws)
    single = phone_fastpath.fast_path(region)
    for raw, w, b in zip(raws, want, batch, strict=True):
        assert b is None or b == w, (raw, region)  # the batch layer only ever says "valid"
        one = single(raw)
        assert one is None or one == (w or phone_fastpath.INVALID), (raw, region)


@st.composite
def numbers(draw: st.DrawFn, region: str) -> str:
    """A number near the region's example numbers, written the ways audiences write them."""
    example = phonenumbers.example_number_for_type(region, draw(st.sampled_from(TYPES)))
    if example is None:
        example = phonenumbers.example_number(region)
    assert example is not None
    nsn = phonenumbers.national_significant_number(example)
    keep = draw(st.integers(0, len(nsn)))
    digits = nsn[:keep] + draw(st.text("0123456789", min_size=0, max_size=len(nsn) - keep + 2))
    code = str(example.country_code)
    prefix = phonenumbers.PhoneMetadata.metadata_for_region(region).national_prefix or ""
    shape = draw(
        st.sampled_from(
            [
                "+{c}{n}",
                "{p}{n}",
                "{n}",
                "{c}{n}",
                "{c}{p}{n}",
                "+{c} ({p}) {n}",
                "00{c}{n}",
                "+{c}{p}{n}",
                "formatted",
            ]
        )
    )
    if shape == "formatted":
        number = phonenumbers.PhoneNumber(country_code=example.country_code)
        number.national_number = int(digits or "0")
        fmt = draw(st.sampled_from([PhoneNumberFormat.E164, PhoneNumberFormat.INTERNATIONAL]))
        text = phonenumbers.format_number(number, fmt)
    else:
        text = shape.format(c=code, p=prefix, n=digits)
    out = []
    for ch in text:  # separators where people put them, and where they don't
        out.append(ch)
        if draw(st.integers(0, 9)) == 0:
            out.append(draw(st.sampled_from([" ", "-", ".", "(", ")", "  "])))
    return "".join(out)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), region=st.sampled_from(REGIONS))
def test_agrees_with_phonenumbers_on_generated_numbers(data: st.DataObject, region: str) -> None:
    home = data.draw(st.lists(numbers(region), min_size=1, max_size=12))
    other = data.draw(st.lists(numbers(data.draw(st.sampled_from(REGIONS))), max_size=4))
    mixed = home + other
    data.draw(st.randoms()).shuffle(mixed)
    check(mixed, region)


@settings(max_examples=200, deadline=None)
@given(
    raws=st.lists(st.text(alphabet="0123456789 +-.()", max_size=22), min_size=1, max_size=10),
    region=st.sampled_from([*REGIONS, None]),
)
def test_agrees_with_phonenumbers_on_arbitrary_digit_strings(
    raws: list[str], region: str | None
) -> None:
    check(raws, region)


@pytest.mark.parametrize(
    ("region", "raws"),
    [
        # The national-prefix rule, with and without the prefix; the "(0)" habit.
        ("GB", ["07400 123456", "7400 123456", "+44 (0) 7400 123456", "+44 07400 123456"]),
        # A +44 number of Guernsey: region lookup past GB (leading digits, type test).
        ("GB", ["+44 7911 123456", "07911 123456", "+447781123456", "07624 123456"]),
        # The home code without "+", a too-long number, an IDD prefix (full parse).
        ("GB", ["447400123456", "0044 7400 123456", "074001234567", "00 44 7400 123456"]),
        # Unallocated (drama) and impossible numbers are still invalid.
        ("GB", ["+447700900123", "07700 900123", "+44 12", "0", "", "   ", "+", "++447400123456"]),
        # Too long for normalise_phone (over 64 characters), though few digits.
        ("GB", ["0 7 4 0 0 1 2 3 4 5 6" + " " * 60]),
        # NANP: national prefix "1", the home code, and a number of Canada.
        ("US", ["(650) 253-0000", "1 650 253 0000", "+1 650 253 0000", "650.253.0000"]),
        ("US", ["+1 416 555 0123", "416 555 0123", "011 44 7400 123456", "1650253000"]),
        ("CA", ["416 555 0123", "+1 650 253 0000", "1 416 555 0123"]),
        # Variable lengths (DE), a fixed nine digits (FR), the prefix-free Italian zero.
        ("DE", ["030 123456", "+49 30 123456", "0151 23456789", "49 30 123456", "030 1"]),
        ("FR", ["01 23 45 67 89", "+33 1 23 45 67 89", "0033 1 23 45 67 89", "6 12 34 56 78"]),
        ("IT", ["02 1234 5678", "+39 02 1234 5678", "312 345 6789", "+39 312 345 6789"]),
        # India: numbers that start with the digits of the country code.
        ("IN", ["91234 56789", "9123456789", "91 98765 43210", "+91 98765 43210", "919876543210"]),
        # Transform rules (AR, BR) and a non-geographic code: the replay or the full parse.
        ("AR", ["011 15 2345-6789", "+54 9 11 2345 6789", "0 11 2345 6789"]),
        ("BR", ["(11) 91234-5678", "0 11 91234-5678", "+55 11 91234 5678", "0xx11 91234 5678"]),
        ("GB", ["+800 1234 5678", "+0 7400 123456", "+999 123 456"]),
        # Other digits, letters, extensions, RFC 3966: all for the full parse.
        ("GB", ["٠٧٤٠٠ ١٢٣٤٥٦", "07400 123456 ext. 12", "tel:+44-7400-123456", "0800 FLOWERS"]),
        # No region: international only.
        (None, ["+44 7400 123456", "07400 123456", "+1 650 253 0000"]),
    ],
)
def test_known_tricky_cases(region: str | None, raws: list[str]) -> None:
    check(raws, region)


def test_a_value_spanning_lines_or_a_non_string_is_decided_one_by_one() -> None:
    check(["07400 123456\n07400 123457", "07400 123456"], "GB")
    with pytest.raises(InvalidInput):
        normalise_phone_bulk(None, "GB")  # type: ignore[arg-type]
    result = normalise_phones([None, "07400 123456"], "GB")  # type: ignore[list-item]
    assert result.values == [None, "+447400123456"] and result.invalid == [0]


def test_invalid_rows_are_reported_and_the_repr_shows_no_number() -> None:
    result = normalise_phones(["07400 123456", "garbage", "+447700900123"], "GB")
    assert result.values == ["+447400123456", None, None]
    assert result.invalid == [1, 2]
    assert "7400" not in repr(result) and "3 rows, 2 invalid" in repr(result)
    with pytest.raises(InvalidInput) as err:
        normalise_phone_bulk("+447700900123", "GB", field="to")
    assert err.value.field == "to" and "7700" not in str(err.value)
