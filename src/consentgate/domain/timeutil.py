"""RFC 3339 timestamps: strict parsing, one canonical rendering, integer microseconds.

Storage keeps instants as integer microseconds since the epoch (UTC) so SQLite and PostgreSQL
order them identically; the ledger and the API render them with :func:`format_rfc3339`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from consentgate.errors import InvalidInput

# RFC 3339 §5.6 date-time: full date, "T" (or lower-case/space), time, mandatory offset.
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_rfc3339(value: str, *, field: str = "timestamp") -> datetime:
    """Parse an RFC 3339 date-time with an explicit offset; return it in UTC."""
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise InvalidInput(
            f"{field} must be an RFC 3339 date-time with a time zone offset, "
            "e.g. 2026-11-27T13:00:00Z",
            field=field,
        )
    text = value.replace("t", "T").replace(" ", "T").replace("z", "Z")
    # Python keeps microseconds: truncate nanosecond fractions rather than reject them.
    match = re.search(r"\.(\d+)", text)
    if match and len(match.group(1)) > 6:
        text = text[: match.start(1) + 6] + text[match.end(1) :]
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"{field} is not a valid calendar date-time", field=field) from None
    return parsed.astimezone(UTC)


def format_rfc3339(instant: datetime) -> str:
    """Canonical rendering: UTC, ``Z``, microseconds only when non-zero."""
    t = instant.astimezone(UTC)
    # Not strftime: glibc's %Y does not zero-pad years below 1000, which RFC 3339 requires.
    text = f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
    return f"{text}.{t.microsecond:06d}Z" if t.microsecond else f"{text}Z"


def to_micros(instant: datetime) -> int:
    delta = instant.astimezone(UTC) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(micros: int) -> datetime:
    seconds, micro = divmod(micros, 1_000_000)
    return datetime.fromtimestamp(seconds, tz=UTC).replace(microsecond=micro)
