"""Strict base64: exactly one text per byte string.

Python's decoders ignore the unused low bits of the last character, so ``...Q==`` and
``...R==`` decode alike. Anything signed or hashed must not have such twins: a changed
character would go unnoticed. These decoders accept only the canonical encoding.
"""

from __future__ import annotations

import base64
import binascii


def b64decode_strict(text: str) -> bytes:
    """Standard alphabet, with padding."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise ValueError("not canonical base64")
    return raw


def b64url_decode_strict(text: str) -> bytes:
    """URL-safe alphabet, no padding (JOSE)."""
    if not isinstance(text, str) or "=" in text:
        raise ValueError("not unpadded base64url")
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != text:
        raise ValueError("not canonical base64url")
    return raw
