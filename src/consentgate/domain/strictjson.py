"""Strict JSON for bodies from outside (API requests, CMP webhooks, provider callbacks).

RFC 8259 says object names SHOULD be unique and leaves the meaning of duplicates to each
parser: Python's keeps the last one without a word, another reader of the same bytes (the
CMP's own log, an auditor's tool) may keep the first. A consent record must mean one thing to
everyone who reads it, so a body with a repeated name is refused, not guessed at. So are the
non-JSON constants Python accepts (``NaN``, ``Infinity``), numbers too large to be finite,
and strings holding a NUL character (``\u0000``: no field here means one, and PostgreSQL's
text cannot store it) or half a surrogate pair (``\ud800`` alone is no character: it cannot
be written as UTF-8).
Every refusal, including nesting too deep for the parser and integers past Python's
4,300-digit limit, is one :class:`NotJson` (a ``ValueError``), for callers to turn into
their 400.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from consentgate.errors import UnsupportedMediaType


class NotJson(ValueError):
    """The bytes are not one strict JSON value; the message says why, never quotes them."""


def loads(raw: bytes | str) -> Any:
    try:
        value = json.loads(
            raw, object_pairs_hook=_unique, parse_constant=_constant, parse_float=_finite
        )
    except NotJson:
        raise
    except RecursionError:
        raise NotJson("JSON nested too deeply") from None
    except UnicodeDecodeError:
        raise NotJson("not UTF-8") from None
    except ValueError:  # JSONDecodeError; an integer of more than 4,300 digits
        raise NotJson("not valid JSON") from None
    # Only an escape can put either in a string (raw ones are not JSON): look only then.
    suspect = _SUSPECT_BYTES.search(raw) if isinstance(raw, bytes) else _SUSPECT.search(raw)
    if suspect and (why := _unstorable(value)):
        raise NotJson(why)
    return value


_SUSPECT = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")
_SUSPECT_BYTES = re.compile(_SUSPECT.pattern.encode())


def _unstorable(value: Any) -> str | None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return "a string holds a NUL character"
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return "a string holds half a surrogate pair"
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise NotJson("an object repeats a name")
    return out


def _constant(name: str) -> Any:
    raise NotJson(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NotJson("a number too large to represent")
    return value


def require_media_type(content_type: str | None, expected: str) -> None:
    """Refuse (415) a body labelled as another media type than ``expected``. An unlabelled
    body is read as ``expected`` (some senders omit the header); a mislabelled one is not
    guessed at: its sender meant something else by it."""
    if content_type is None:
        return
    given = content_type.partition(";")[0].strip().lower()
    if given and given != expected:
        raise UnsupportedMediaType(f"the body must be {expected}")
