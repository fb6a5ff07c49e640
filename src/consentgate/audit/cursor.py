"""Opaque page cursors: where the next page of an audit report starts.

A cursor carries the sort key of the last item returned — a random ``subject_ref``, or a
send's time and message id, nothing personal — base64url-encoded so clients treat it as a
token. One that comes back altered is rejected (422 naming ``cursor``), never guessed at.
"""

from __future__ import annotations

import re

from consentgate.crypto.signing import b64url
from consentgate.encoding import b64url_decode_strict
from consentgate.errors import InvalidInput

_REF = re.compile(r"^[0-9A-Za-z-]{1,64}$")
_SEND = re.compile(r"^m\|(0|[1-9][0-9]{0,18})\|([0-9A-Za-z-]{1,64})$")


def _bad() -> InvalidInput:
    return InvalidInput("cursor is not a cursor this report returned", field="cursor")


def _text(cursor: str) -> str:
    try:
        return b64url_decode_strict(cursor).decode("ascii")
    except (ValueError, UnicodeDecodeError):
        raise _bad() from None


def subject_cursor(subject_ref: str) -> str:
    return b64url(f"s|{subject_ref}".encode("ascii"))


def parse_subject_cursor(cursor: str | None) -> str:
    """The subject_ref after which to continue ("" for the first page)."""
    if cursor is None:
        return ""
    kind, _, ref = _text(cursor).partition("|")
    if kind != "s" or not _REF.match(ref):
        raise _bad()
    return ref


def send_cursor(at_us: int, message_id: str) -> str:
    return b64url(f"m|{at_us}|{message_id}".encode("ascii"))


def parse_send_cursor(cursor: str | None) -> tuple[int, str] | None:
    """(created_us, message id) after which to continue, or None for the first page."""
    if cursor is None:
        return None
    match = _SEND.match(_text(cursor))
    if match is None:
        raise _bad()
    return int(match.group(1)), match.group(2)
