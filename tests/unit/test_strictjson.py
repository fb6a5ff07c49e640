"""Strict JSON for bodies from outside: one meaning or a refusal."""

from __future__ import annotations

import pytest

from consentgate.domain.strictjson import NotJson, loads


def test_plain_json_reads_as_json() -> None:
    assert loads(b'{"a": [1, 2.5, "x", null, true], "b": {"c": -0.0}}') == {
        "a": [1, 2.5, "x", None, True],
        "b": {"c": -0.0},
    }
    assert loads('"é"') == "é"
    assert loads(b'"a\\\\u0000"') == "a\\u0000"  # an escaped backslash, then text: no NUL
    assert loads(b'"\\ud83d\\ude00"') == "\U0001f600"  # a whole pair is a character


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b'{"status": "granted", "status": "withdrawn"}', "repeats a name"),
        (b'[{"a": 1}, {"b": 1, "b": 1}]', "repeats a name"),
        (b'{"a": NaN}', "NaN is not JSON"),
        (b"-Infinity", "-Infinity is not JSON"),
        (b"1e999999", "too large"),
        (b"9" * 5000, "not valid JSON"),  # past Python's 4,300-digit limit
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"a": "\xff"}', "not UTF-8"),
        (b'{"a": 1', "not valid JSON"),
        (b"", "not valid JSON"),
        (b'{"consent_id": "a\\u0000b"}', "NUL"),
        (b'{"a\\u0000": 1}', "NUL"),
        ('["x", ["\\u0000"]]', "NUL"),
        (b'{"consent_id": "\\ud800"}', "surrogate"),
        (b'["\\uDC00x"]', "surrogate"),
    ],
)
def test_ambiguous_or_malformed_json_is_refused(raw: bytes, why: str) -> None:
    with pytest.raises(NotJson, match=why):
        loads(raw)
    assert issubclass(NotJson, ValueError)
