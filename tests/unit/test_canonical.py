"""The leaf encoder's fast path gives exactly the bytes of the ``rfc8785`` reference."""

from __future__ import annotations

from typing import Any

import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from consentgate.ledger.leaf import canonical

text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
scalars = st.none() | st.booleans() | st.integers(-(2**60), 2**60) | text
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=400)
@given(st.dictionaries(text, documents, max_size=6))
def test_fast_path_matches_rfc8785(document: dict[str, Any]) -> None:
    try:
        expected = bytes(rfc8785.dumps(document))
    except (rfc8785.CanonicalizationError, ValueError, OverflowError):
        return  # out of JCS's domain (e.g. integers beyond 2^53): not a leaf we could write
    assert canonical(document) == expected


def test_known_awkward_cases() -> None:
    for doc in (
        {"\U0001f600": 1, "\ue000": 2},  # key order differs between UTF-16 and code points
        {"a": "\u0000\u001f\u007f\u2028", "b": '"\\/'},
        {"n": 2**53 - 1, "m": -(2**53 - 1), "t": True, "f": False, "z": None},
        {"nested": {"b": [1, {"y": 2, "x": 1}], "a": []}},
    ):
        assert canonical(doc) == bytes(rfc8785.dumps(doc))
