"""CSV renderings of the audit reports (RFC 4180: CRLF line ends, quoting by the csv module).

Rows are rendered in chunks as they are read, so a report of a million subjects streams in
constant memory. ``None`` becomes an empty field.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

CONSENT_COLUMNS = ("hashed_id", "status", "effective_at", "seq")
SEND_COLUMNS = (
    "message_id",
    "hashed_id",
    "consent_type",
    "action",
    "mode",
    "reason",
    "consent_seq",
    "template_id",
    "campaign_id",
    "at",
)
FALLBACK_COLUMNS = ("message_id", "hashed_id", "mode", "reason", "at")


def render(
    columns: tuple[str, ...],
    items: Iterable[T],
    as_dict: Callable[[T], dict[str, Any]],
    chunk: int = 1000,
) -> Iterator[str]:
    """The header line, then the items' ``columns``, ``chunk`` rows per piece."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(columns)
    pending = 0
    for item in items:
        values = as_dict(item)
        writer.writerow([values[c] for c in columns])
        pending += 1
        if pending >= chunk:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            pending = 0
    yield buffer.getvalue()
