"""Pure parts of the audit: the rule a send is held to, cursors, CSV, the bundle's form."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consentgate.audit import csvout, cursor
from consentgate.audit.bundle import FORMAT, LeafFacts, send_in_force
from consentgate.audit.bundle_check import BundleInvalid, verify_bundle
from consentgate.errors import InvalidInput
from consentgate.ledger.leaf import canonical

H = 3_600_000_000
SKEW = timedelta(minutes=5)
SEND_AT = 100 * H


def leaf(
    seq: int, status: str, ts_h: float, received_h: float | None = None, **kw: str
) -> LeafFacts:
    return LeafFacts(
        seq,
        kw.get("purpose", "marketing_rcs"),
        status,
        int(ts_h * H),
        int((ts_h if received_h is None else received_h) * H),
        kw.get("consent_id", f"c{seq}"),
    )


def check(grant: LeafFacts, *others: LeafFacts, max_age_h: float | None = None) -> str | None:
    max_age = None if max_age_h is None else timedelta(hours=max_age_h)
    verdict = send_in_force(SEND_AT, "marketing_rcs", grant, [grant, *others], max_age, SKEW)
    return verdict.problem


def test_a_grant_in_force_passes() -> None:
    grant = leaf(1, "granted", 90)
    assert check(grant) is None
    # An older withdrawal, a later grant, another purpose's withdrawal: none matter.
    assert (
        check(
            grant,
            leaf(0, "withdrawn", 80),
            leaf(2, "granted", 95),
            leaf(3, "withdrawn", 95, purpose="analytics"),
            leaf(4, "erased", 99, purpose="*"),
        )
        is None
    )


@pytest.mark.parametrize(
    ("grant", "others", "max_age_h", "problem"),
    [
        (leaf(1, "granted", 90, purpose="analytics"), [], None, "is for analytics"),
        (leaf(1, "withdrawn", 90), [], None, "not a grant"),
        (leaf(1, "erased", 90, purpose="marketing_rcs"), [], None, "not a grant"),
        (leaf(1, "granted", 100.1), [], None, "timestamped after the send"),
        (leaf(1, "granted", 90), [], 10, "expired"),
        (leaf(1, "granted", 90), [leaf(2, "withdrawn", 95)], None, "leaf 2 withdrew"),
        # Same instant: withdrawn wins, so it supersedes the grant.
        (leaf(1, "granted", 90), [leaf(2, "withdrawn", 90)], None, "leaf 2 withdrew"),
        # Effective exactly at the send, and known by then.
        (leaf(1, "granted", 90), [leaf(2, "withdrawn", 100, 100)], None, "leaf 2 withdrew"),
    ],
)
def test_sends_not_allowed_by_their_leaf_fail(
    grant: LeafFacts, others: list[LeafFacts], max_age_h: float | None, problem: str
) -> None:
    found = check(grant, *others, max_age_h=max_age_h)
    assert found is not None and problem in found


def test_grant_within_the_clock_skew_and_before_expiry_passes() -> None:
    assert check(leaf(1, "granted", 100 + 4 / 60)) is None
    assert check(leaf(1, "granted", 90), max_age_h=10.01) is None


def test_withdrawals_the_service_could_not_know_are_late_not_failures() -> None:
    grant = leaf(1, "granted", 90)
    late = leaf(2, "withdrawn", 95, received_h=101)
    after = leaf(3, "withdrawn", 101)  # effective after the send
    verdict = send_in_force(SEND_AT, "marketing_rcs", grant, [grant, late, after], None, SKEW)
    assert verdict.problem is None and verdict.late_withdrawals == (2,)


def test_consent_id_breaks_a_same_instant_same_status_tie() -> None:
    grant = leaf(1, "granted", 90, consent_id="b")
    assert check(grant, leaf(2, "withdrawn", 90, consent_id="a")) is not None


@given(st.from_regex(r"[0-9A-Za-z-]{1,64}", fullmatch=True))
def test_subject_cursor_round_trip(ref: str) -> None:
    assert cursor.parse_subject_cursor(cursor.subject_cursor(ref)) == ref


@given(st.integers(0, 2**62), st.from_regex(r"[0-9a-f-]{1,36}", fullmatch=True))
def test_send_cursor_round_trip(at_us: int, message_id: str) -> None:
    assert cursor.parse_send_cursor(cursor.send_cursor(at_us, message_id)) == (at_us, message_id)


@pytest.mark.parametrize("bad", ["", "!!", "bXwtMXxh", "bXwwMXxh", cursor.subject_cursor("abc")])
def test_bad_send_cursors(bad: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        cursor.parse_send_cursor(bad)
    assert raised.value.field == "cursor"


@given(
    st.lists(
        st.fixed_dictionaries(
            {c: st.one_of(st.none(), st.integers(), st.text()) for c in csvout.SEND_COLUMNS}
        ),
        max_size=30,
    ),
    st.integers(1, 7),
)
def test_csv_quotes_anything_and_reads_back(rows: list[dict[str, object]], chunk: int) -> None:
    text = "".join(csvout.render(csvout.SEND_COLUMNS, rows, lambda r: r, chunk=chunk))
    assert text.startswith(",".join(csvout.SEND_COLUMNS) + "\r\n")
    back = list(csv.reader(io.StringIO(text, newline="")))
    assert back[0] == list(csvout.SEND_COLUMNS)
    assert back[1:] == [
        ["" if r[c] is None else str(r[c]) for c in csvout.SEND_COLUMNS] for r in rows
    ]


def test_bundle_must_be_canonical_bytes() -> None:
    doc = {"format": FORMAT, "tenant": "acme"}
    for raw in (
        json.dumps(doc, indent=2).encode(),
        json.dumps(doc, sort_keys=True).encode(),  # spaces after separators
        canonical(doc).replace(b'"acme"', b'"\\u0061cme"'),  # same value, other spelling
        b"\xef\xbb\xbf" + canonical(doc),
    ):
        with pytest.raises(BundleInvalid, match=r"canonical|UTF-8 JSON"):
            verify_bundle(raw, {"keys": []}, [])
    with pytest.raises(BundleInvalid, match="signature"):
        verify_bundle(canonical({**doc, "signature": "x.y.z"}), {"keys": []}, [])
    with pytest.raises(BundleInvalid, match="not a consentgate"):
        verify_bundle(canonical({"format": "other"}), {"keys": []}, [])
