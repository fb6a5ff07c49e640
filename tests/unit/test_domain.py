"""Pure rules of ``consentgate.domain``: RFC 3339 time, identifier normalisation, consent state.

No I/O: these run without a database or a key store.
"""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consentgate.domain import consent as rules
from consentgate.domain.consent import (
    ConsentStatus,
    EffectiveStatus,
    Precedence,
    StateEntry,
)
from consentgate.domain.identity import (
    Identifier,
    IdentifierKind,
    normalise_email,
    normalise_phone,
)
from consentgate.domain.timeutil import format_rfc3339, from_micros, parse_rfc3339, to_micros
from consentgate.errors import InvalidInput

T0 = datetime(2026, 11, 27, 13, 0, 0, tzinfo=UTC)

# --- timeutil -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-27T13:00:00Z", T0),
        ("2026-11-27t13:00:00z", T0),
        ("2026-11-27 13:00:00Z", T0),
        ("2026-11-27T13:00:00+00:00", T0),
        ("2026-11-27T13:00:00-00:00", T0),
        ("2026-11-27T18:30:00+05:30", T0),
        ("2026-11-27T08:00:00-05:00", T0),
        ("2026-11-28T00:45:00+11:45", T0),
        ("2026-11-27T13:00:00.5Z", T0.replace(microsecond=500_000)),
        ("2026-11-27T13:00:00.000001Z", T0.replace(microsecond=1)),
        # Nanosecond fractions are truncated to microseconds, not rounded and not rejected.
        ("2026-11-27T13:00:00.123456789Z", T0.replace(microsecond=123_456)),
        ("2026-11-27T14:00:00.999999999+01:00", T0.replace(microsecond=999_999)),
    ],
)
def test_parse_rfc3339_accepts_offsets_and_returns_utc(text: str, expected: datetime) -> None:
    parsed = parse_rfc3339(text)
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)
    assert parsed.tzinfo is not None


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-27T13:00:00",  # naive: no offset
        "2026-11-27T13:00:00.123",  # naive with fraction
        "2026-11-27",  # date only
        "13:00:00Z",  # time only
        "2026-11-27T13:00Z",  # no seconds
        "2026-11-27T13:00:00+0100",  # offset without colon
        "2026-11-27T13:00:00+01",  # hour-only offset
        "2026-11-27T13:00:00 Z",
        "2026-11-27T13:00:00Z ",
        " 2026-11-27T13:00:00Z",
        "2026-11-27T13:00:00.Z",  # empty fraction
        "26-11-27T13:00:00Z",
        "2026/11/27T13:00:00Z",
        "2026-13-01T00:00:00Z",  # month 13
        "2026-02-30T00:00:00Z",  # no such day
        "2026-11-27T24:00:00Z",
        "2026-11-27T13:60:00Z",
        "2026-11-27T13:00:00+24:00",
        "garbage",
        "",
        "1764248400",  # epoch seconds
        "２０２６-11-27T13:00:00Z",  # fullwidth digits
    ],
)
def test_parse_rfc3339_rejects_everything_else_naming_the_field(text: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_rfc3339(text, field="events[3].timestamp")
    assert info.value.field == "events[3].timestamp"
    assert "events[3].timestamp" in info.value.detail


@pytest.mark.parametrize("value", [None, 1764248400, T0, b"2026-11-27T13:00:00Z"])
def test_parse_rfc3339_rejects_non_strings(value: object) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_rfc3339(value)  # type: ignore[arg-type]
    assert info.value.field == "timestamp"


def test_format_rfc3339_is_canonical_utc_z() -> None:
    assert format_rfc3339(T0) == "2026-11-27T13:00:00Z"
    assert format_rfc3339(T0.replace(microsecond=5)) == "2026-11-27T13:00:00.000005Z"
    assert format_rfc3339(T0.replace(microsecond=500_000)) == "2026-11-27T13:00:00.500000Z"
    ist = timezone(timedelta(hours=5, minutes=30))
    assert format_rfc3339(T0.astimezone(ist)) == "2026-11-27T13:00:00Z"
    # Equivalent spellings of one instant render identically.
    spellings = ["2026-11-27T13:00:00Z", "2026-11-27T14:00:00+01:00", "2026-11-27t13:00:00.0z"]
    assert {format_rfc3339(parse_rfc3339(s)) for s in spellings} == {"2026-11-27T13:00:00Z"}


_years_1000_to_9998 = st.datetimes(
    min_value=datetime(1001, 1, 1), max_value=datetime(9998, 12, 31), timezones=st.just(UTC)
)


@given(instant=_years_1000_to_9998, offset_minutes=st.integers(-(23 * 60 + 59), 23 * 60 + 59))
def test_rfc3339_and_micros_round_trip(instant: datetime, offset_minutes: int) -> None:
    rendered = format_rfc3339(instant)
    assert parse_rfc3339(rendered) == instant
    assert format_rfc3339(parse_rfc3339(rendered)) == rendered
    assert from_micros(to_micros(instant)) == instant
    # The same instant written with any offset parses to the same UTC instant.
    local = instant.astimezone(timezone(timedelta(minutes=offset_minutes)))
    assert parse_rfc3339(local.isoformat()) == instant
    assert to_micros(local) == to_micros(instant)


@given(a=_years_1000_to_9998, b=_years_1000_to_9998)
def test_micros_preserve_order(a: datetime, b: datetime) -> None:
    assert (a < b) == (to_micros(a) < to_micros(b))
    assert to_micros(b) - to_micros(a) == (b - a) // timedelta(microseconds=1)


def test_micros_known_values() -> None:
    assert to_micros(datetime(1970, 1, 1, tzinfo=UTC)) == 0
    assert to_micros(datetime(1970, 1, 1, 0, 0, 1, 2, tzinfo=UTC)) == 1_000_002
    assert from_micros(-1) == datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)


def test_format_rfc3339_pads_years_below_1000() -> None:
    instant = parse_rfc3339("0999-01-01T00:00:00Z")
    assert format_rfc3339(instant) == "0999-01-01T00:00:00Z"
    assert parse_rfc3339(format_rfc3339(instant)) == instant


# --- identity: phone numbers ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "region", "e164"),
    [
        ("07911 123456", "GB", "+447911123456"),
        ("07911123456", "GB", "+447911123456"),
        ("(07911) 123-456", "GB", "+447911123456"),
        ("+447911123456", None, "+447911123456"),
        ("+44 7911 123456", None, "+447911123456"),
        ("+44 (0)7911 123456", None, "+447911123456"),
        ("  +44 7911 123456  ", None, "+447911123456"),
        # An international number ignores the region it is given.
        ("+44 7911 123456", "US", "+447911123456"),
        ("+1 650 253 0000", None, "+16502530000"),
        ("(650) 253-0000", "US", "+16502530000"),
        ("+1 650 253 0000", "GB", "+16502530000"),
    ],
)
def test_phone_to_e164(raw: str, region: str | None, e164: str) -> None:
    ident = normalise_phone(raw, region)
    assert ident.kind is IdentifierKind.PHONE
    assert ident.value == e164


def test_national_and_international_forms_are_one_identifier() -> None:
    assert normalise_phone("07911 123456", "GB") == normalise_phone("+447911123456", None)


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text)


@pytest.mark.parametrize(
    ("raw", "region"),
    [
        ("07911 123456", None),  # national format needs a region
        ("07700 900123", "GB"),  # Ofcom drama range: not a valid number
        ("+447700900123", None),
        ("+44 7911 1234567", None),  # too long
        ("0791112345", "GB"),  # too short
        ("+1 555 0100", None),
        ("+999 1234 5678", None),  # no such country code
        ("12", "GB"),
        ("not a number", "GB"),
        ("", "GB"),
        ("   ", "GB"),
        ("+44" + "1" * 80, None),  # absurdly long input
    ],
)
def test_invalid_phone_raises_naming_field_never_echoing_digits(
    raw: str, region: str | None
) -> None:
    with pytest.raises(InvalidInput) as info:
        normalise_phone(raw, region, field="contact")
    assert info.value.field == "contact"
    message = str(info.value)
    assert "contact" in message
    assert info.value.detail == message
    # No digit of the submitted number, in any grouping, reaches the message.
    assert not any(ch.isdigit() for ch in message)
    if _digits(raw):
        assert _digits(raw)[-4:] not in message


def test_phone_error_with_indexed_field_name_still_hides_the_number() -> None:
    with pytest.raises(InvalidInput) as info:
        normalise_phone("07700 900123", "GB", field="events[2].phone")
    assert info.value.field == "events[2].phone"
    assert "900123" not in str(info.value)
    assert "07700" not in str(info.value)


@pytest.mark.parametrize("value", [None, 447911123456, b"+447911123456"])
def test_non_string_phone_rejected(value: object) -> None:
    with pytest.raises(InvalidInput) as info:
        normalise_phone(value, "GB")  # type: ignore[arg-type]
    assert info.value.field == "phone"


# --- identity: e-mail -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("Foo.Bar@Example.COM", "foo.bar@example.com"),
        ("  someone@example.org\t", "someone@example.org"),
        ("user+tag@example.com", "user+tag@example.com"),  # +tags are kept: not universal
        ("first.last@gmail.com", "first.last@gmail.com"),  # dots are kept too
        ("user@bücher.example", "user@xn--bcher-kva.example"),
        ("User@BÜCHER.Example", "user@xn--bcher-kva.example"),
        ("info@例え.jp", "info@xn--r8jz45g.jp"),
    ],
)
def test_email_normalisation(raw: str, canonical: str) -> None:
    ident = normalise_email(raw)
    assert ident.kind is IdentifierKind.EMAIL
    assert ident.value == canonical


def test_email_case_variants_are_one_identifier() -> None:
    assert normalise_email("ALICE@EXAMPLE.COM") == normalise_email("alice@example.com")
    assert normalise_email("alice@example.com") != normalise_email("alice@example.org")


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "plain",
        "alice@",
        "@example.com",
        "alice@localhost",  # no dot in the domain
        "alice@@example.com",
        "a@b@example.com",
        "alice smith@example.com",
        "alice@exa mple.com",
        "alice@.example.com",
        "alice@example.com.",
        "alice@example..com",
        "x" * 65 + "@example.com",  # local part over 64
        "a@" + "b" * 64 + ".com",  # DNS label over 63
        "a@" + ("b" * 60 + ".") * 6 + "com",  # over 320 characters
    ],
)
def test_bad_email_rejected_naming_field_not_value(raw: str) -> None:
    with pytest.raises(InvalidInput) as info:
        normalise_email(raw, field="events[0].email")
    assert info.value.field == "events[0].email"
    local = raw.partition("@")[0].strip()
    if len(local) >= 3:
        assert local not in str(info.value)


def test_non_string_email_rejected() -> None:
    with pytest.raises(InvalidInput) as info:
        normalise_email(None)  # type: ignore[arg-type]
    assert info.value.field == "email"


@pytest.mark.parametrize(
    "ident",
    [
        normalise_phone("+447911123456", None),
        normalise_email("secret.person@example.com"),
        Identifier(IdentifierKind.PHONE, "+16502530000"),
    ],
)
def test_identifier_never_shows_its_value(ident: Identifier) -> None:
    for rendered in (
        repr(ident),
        str(ident),
        f"{ident}",
        f"{ident!r}",
        repr([ident]),
        str({1: ident}),
    ):
        assert ident.value not in rendered
        assert "redacted" in rendered
        assert ident.kind.value in rendered
    digits = _digits(ident.value)
    if digits:
        assert digits[-6:] not in repr(ident)


# --- consent rules --------------------------------------------------------------------------


def entry(
    status: ConsentStatus | str, at: datetime, seq: int = 0, consent_id: str = "c"
) -> StateEntry:
    return StateEntry(ConsentStatus(status), at, seq, consent_id)


def test_latest_timestamp_wins_not_latest_arrival() -> None:
    early = entry("granted", T0, 0, "a")
    late = entry("withdrawn", T0 + timedelta(seconds=1), 1, "b")
    assert rules.apply(None, early) == early
    assert rules.apply(early, late) == late
    # The older event arriving after the newer one changes nothing.
    assert rules.apply(late, early) is None
    assert rules.fold([("s", "p", late), ("s", "p", early)]) == {("s", "p"): late}
    assert rules.fold([("s", "p", early), ("s", "p", late)]) == {("s", "p"): late}


def test_a_later_grant_overrides_an_earlier_withdrawal() -> None:
    withdrawn = entry("withdrawn", T0, 0, "a")
    granted = entry("granted", T0 + timedelta(microseconds=1), 1, "b")
    assert rules.apply(withdrawn, granted) == granted
    assert rules.apply(granted, withdrawn) is None


@pytest.mark.parametrize(("grant_id", "withdraw_id"), [("a", "z"), ("z", "a")])
def test_equal_timestamps_withdrawn_wins_whatever_the_ids_and_order(
    grant_id: str, withdraw_id: str
) -> None:
    granted = entry("granted", T0, 0, grant_id)
    withdrawn = entry("withdrawn", T0, 1, withdraw_id)
    assert rules.apply(granted, withdrawn) == withdrawn
    assert rules.apply(withdrawn, granted) is None
    for order in ([granted, withdrawn], [withdrawn, granted]):
        state = rules.fold(("s", "p", e) for e in order)
        assert state[("s", "p")].status is ConsentStatus.WITHDRAWN


def test_remaining_ties_go_to_the_greater_consent_id() -> None:
    a = entry("granted", T0, 7, "a")
    b = entry("granted", T0, 3, "b")
    assert rules.apply(a, b) == b
    assert rules.apply(b, a) is None
    assert Precedence(T0, ConsentStatus.GRANTED, "b").supersedes(None)


def test_identical_precedence_does_not_supersede() -> None:
    a = entry("granted", T0, 0, "a")
    assert rules.apply(a, entry("granted", T0, 9, "a")) is None


def test_fold_keeps_subjects_and_purposes_apart() -> None:
    events = [
        ("s1", "p1", entry("granted", T0, 0, "a")),
        ("s1", "p2", entry("withdrawn", T0, 1, "b")),
        ("s2", "p1", entry("withdrawn", T0 - timedelta(days=1), 2, "c")),
        ("s1", "p1", entry("withdrawn", T0 - timedelta(days=1), 3, "d")),
    ]
    state = rules.fold(events)
    assert state == {
        ("s1", "p1"): events[0][2],
        ("s1", "p2"): events[1][2],
        ("s2", "p1"): events[2][2],
    }


def test_view_expires_a_grant_at_exactly_max_age() -> None:
    max_age = timedelta(days=730)
    granted = entry("granted", T0, 4)
    expiry = T0 + max_age
    before = rules.view(granted, max_age, expiry - timedelta(microseconds=1))
    at = rules.view(granted, max_age, expiry)
    after = rules.view(granted, max_age, expiry + timedelta(days=1))
    assert before.status is EffectiveStatus.GRANTED
    assert at.status is EffectiveStatus.EXPIRED
    assert after.status is EffectiveStatus.EXPIRED
    for v in (before, at, after):
        assert v.expires_at == expiry
        assert v.effective_at == T0
        assert v.event_seq == 4


def test_view_without_max_age_or_for_withdrawal_never_expires() -> None:
    far = T0 + timedelta(days=100_000)
    granted = rules.view(entry("granted", T0), None, far)
    assert granted.status is EffectiveStatus.GRANTED
    assert granted.expires_at is None
    withdrawn = rules.view(entry("withdrawn", T0), timedelta(days=1), far)
    assert withdrawn.status is EffectiveStatus.WITHDRAWN
    assert withdrawn.expires_at is None
    assert rules.expires_at(entry("withdrawn", T0), timedelta(days=1)) is None
    assert rules.expires_at(entry("granted", T0), timedelta(days=1)) == T0 + timedelta(days=1)


def test_check_not_future_allows_five_minutes_of_skew() -> None:
    skew = timedelta(minutes=5)
    rules.check_not_future(T0 - timedelta(days=3650), T0, skew)
    rules.check_not_future(T0, T0, skew)
    rules.check_not_future(T0 + skew, T0, skew)  # exactly at the tolerance: accepted
    with pytest.raises(InvalidInput) as info:
        rules.check_not_future(T0 + skew + timedelta(microseconds=1), T0, skew)
    assert info.value.field == "timestamp"
    assert "300" in info.value.detail
    with pytest.raises(InvalidInput) as info:
        rules.check_not_future(T0 + timedelta(hours=1), T0, skew, field="events[1].timestamp")
    assert info.value.field == "events[1].timestamp"


# --- property: the state depends on the set of events, not their order ---------------------

_SUBJECTS = ("s1", "s2")
_PURPOSES = ("marketing_rcs", "analytics")
_INSTANTS = (T0, T0 + timedelta(seconds=1), T0 + timedelta(days=2))

Event = tuple[str, str, StateEntry]


@st.composite
def event_sets(draw: st.DrawFn) -> list[Event]:
    n = draw(st.integers(min_value=1, max_value=14))
    ids = draw(
        st.lists(
            st.text(alphabet="abcxyz", min_size=1, max_size=3), min_size=n, max_size=n, unique=True
        )
    )
    events = []
    for seq, consent_id in enumerate(ids):
        events.append(
            (
                draw(st.sampled_from(_SUBJECTS)),
                draw(st.sampled_from(_PURPOSES)),
                StateEntry(
                    draw(st.sampled_from(ConsentStatus)),
                    draw(st.sampled_from(_INSTANTS)),
                    seq,
                    consent_id,
                ),
            )
        )
    return events


@given(events=event_sets(), data=st.data())
def test_fold_is_independent_of_arrival_order(events: list[Event], data: st.DataObject) -> None:
    reference = rules.fold(events)
    permuted = data.draw(st.permutations(events))
    assert rules.fold(permuted) == reference
    assert rules.fold(reversed(events)) == reference
    # And the winner is what DESIGN §3 says, checked without the Precedence key.
    for key, winner in reference.items():
        group = [e for s, p, e in events if (s, p) == key]
        latest = max(e.effective_at for e in group)
        at_latest = [e for e in group if e.effective_at == latest]
        assert winner.effective_at == latest
        if any(e.status is ConsentStatus.WITHDRAWN for e in at_latest):
            assert winner.status is ConsentStatus.WITHDRAWN
        else:
            assert winner.status is ConsentStatus.GRANTED
        assert winner in at_latest
    assert set(reference) == {(s, p) for s, p, _ in events}


@given(events=event_sets(), seed=st.integers(0, 2**32 - 1))
def test_incremental_apply_matches_fold(events: list[Event], seed: int) -> None:
    """Applying events one by one (as ingest does across requests) reaches the same state."""
    order = list(events)
    random.Random(seed).shuffle(order)
    state: dict[tuple[str, str], StateEntry] = {}
    for s, p, e in order:
        winner = rules.apply(state.get((s, p)), e)
        if winner is not None:
            state[(s, p)] = winner
    assert state == rules.fold(events)


def test_bulk_normalisation_fast_path_agrees_with_the_full_parse() -> None:
    from consentgate.domain.identity import normalise_phone_bulk

    for raw in ("+447911123456", "+16502530000", "07911 123456", "+44 7911 123456"):
        assert normalise_phone_bulk(raw, "GB").value == normalise_phone(raw, "GB").value
    # Canonical-looking but unallocated: invalid, as in the full parse (the fast path is
    # compiled from phonenumbers' metadata; tests/unit/test_phone_fastpath.py holds it there).
    for raw in ("+447700900123", "+44 12"):
        with pytest.raises(InvalidInput):
            normalise_phone_bulk(raw, "GB")
