"""Bit-level reading of IAB payloads, and the one error every CMP string decoder raises.

IAB's TC strings and GPP sections are bit sequences written most-significant bit first and
carried as base64url without padding. This module owns turning such text into bits, reading
fixed-width integers, flags, bit fields, letters, deciseconds timestamps, Fibonacci-coded
integers and 16-bit ID ranges out of them, and reporting every malformed or short input as a
:class:`CmpStringError` that names what was being read and at which bit. The payload is
decoded once into a single Python ``int``, so each read is a shift and a mask.
"""

from __future__ import annotations

import binascii
import re
from datetime import UTC, datetime, timedelta
from itertools import chain, compress
from typing import NoReturn

__all__ = ["MAX_EXPANDED_IDS", "BitReader", "CmpStringError"]

# A range entry costs 33 bits but can stand for 65,535 ids, so a few KB of crafted input could
# otherwise ask for hundreds of millions of set insertions. Real strings stay far below this.
MAX_EXPANDED_IDS = 1 << 20

_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
_TO_STANDARD_BASE64 = str.maketrans("-_", "+/")
_ASCII_BITS = bytes.maketrans(b"01", b"\x00\x01")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Fibonacci code weights: bit i of a code word is worth F(i + 2) = 1, 2, 3, 5, 8, ...
_FIBONACCI_BITS = 64
_FIBONACCI = [1, 2]
while len(_FIBONACCI) < _FIBONACCI_BITS:
    _FIBONACCI.append(_FIBONACCI[-1] + _FIBONACCI[-2])


class CmpStringError(ValueError):
    """A TC or GPP string that cannot be decoded; the message says what was wrong and where."""


class BitReader:
    """Sequential reader over the bits of one base64url-encoded segment.

    ``what`` names the string (``"TC string"``) and ``where`` the part being read
    (``"core segment"``); both only feed error messages.
    """

    __slots__ = ("_id_budget", "_shift_base", "_value", "limit", "pos", "what", "where")

    def __init__(self, text: str, what: str, where: str) -> None:
        self.what = what
        self.where = where
        if _BASE64URL.fullmatch(text) is None:
            index, char = next(
                (i, c) for i, c in enumerate(text) if _BASE64URL.fullmatch(c) is None
            )
            raise CmpStringError(
                f"{what} has an invalid base64url character {char!r} at position {index} "
                f"of the {where}"
            )
        # Pad with 'A' (six zero bits) to whole 4-char groups so no payload bit is dropped by
        # the byte-oriented decoder; the reader stops at the real end, ``limit``.
        padded = text.translate(_TO_STANDARD_BASE64) + "A" * (-len(text) % 4)
        self._value = int.from_bytes(binascii.a2b_base64(padded), "big")
        self._shift_base = len(padded) * 6
        self.limit = len(text) * 6
        self.pos = 0
        self._id_budget = MAX_EXPANDED_IDS

    @property
    def remaining(self) -> int:
        """Bits left before the end of the segment (padding included)."""
        return self.limit - self.pos

    def error(self, message: str, *, at: int | None = None) -> CmpStringError:
        """Build an error located at ``at`` (default: the current bit) in this segment."""
        bit = self.pos if at is None else at
        return CmpStringError(f"{self.what}: {message} in {self.where} at bit {bit}")

    def _truncated(self, needed: int, field: str) -> NoReturn:
        raise CmpStringError(
            f"{self.what} truncated in {self.where} at bit {self.pos} ({field}): "
            f"needs {needed} bits, {self.limit - self.pos} left"
        )

    def read_int(self, n: int, field: str) -> int:
        """Read an unsigned ``n``-bit big-endian integer."""
        end = self.pos + n
        if end > self.limit:
            self._truncated(n, field)
        self.pos = end
        return (self._value >> (self._shift_base - end)) & ((1 << n) - 1)

    def read_bool(self, field: str) -> bool:
        return self.read_int(1, field) == 1

    def read_bitfield(self, n: int, field: str) -> frozenset[int]:
        """Read ``n`` flags where bit *i* (from 0) says whether id *i + 1* is in the set."""
        if n == 0:
            return frozenset()
        digits = format(self.read_int(n, field), "b")
        # format() drops leading zeros: the first digit printed belongs to id n - len + 1.
        first_id = n - len(digits) + 1
        flags = digits.encode("ascii").translate(_ASCII_BITS)
        return frozenset(compress(range(first_id, n + 1), flags))

    def read_letters(self, count: int, field: str) -> str:
        """Read ``count`` 6-bit letters where 0 is 'A' and 25 is 'Z'."""
        start = self.pos
        letters = []
        for _ in range(count):
            code = self.read_int(6, field)
            if code > 25:
                raise self.error(f"letter code {code} is not A-Z ({field})", at=start)
            letters.append(chr(65 + code))
        return "".join(letters)

    def read_datetime(self, field: str) -> datetime:
        """Read a 36-bit count of deciseconds since the Unix epoch as an aware UTC datetime."""
        return _EPOCH + timedelta(milliseconds=self.read_int(36, field) * 100)

    def read_fibonacci_int(self, field: str, max_bits: int = 48) -> int:
        """Read a Fibonacci-coded positive integer: weights 1, 2, 3, 5, ... ended by "11"."""
        start = self.pos
        total = 0
        previous = 0
        for index in range(min(max_bits, _FIBONACCI_BITS - 1) + 1):
            bit = self.read_int(1, field)
            if bit and previous:
                return total
            if bit:
                total += _FIBONACCI[index]
            previous = bit
        raise self.error(f"Fibonacci integer ({field}) has no end within {max_bits} bits", at=start)

    def read_id_ranges(self, field: str) -> list[tuple[int, int]]:
        """Read a 12-bit entry count, then entries of IsARange(1) Start(16) [End(16)].

        Returns inclusive ``(start, end)`` spans. Entries are peeked 17 or 33 bits at a time
        rather than field by field, because range-encoded vendor lists are the hot path.
        """
        count = self.read_int(12, field)
        value, base, limit = self._value, self._shift_base, self.limit
        pos = self.pos
        spans = []
        for _ in range(count):
            if pos + 17 > limit:
                self.pos = pos
                self._truncated(17, field)
            head = (value >> (base - pos - 17)) & 0x1FFFF
            start = head & 0xFFFF
            if head >> 16:
                if pos + 33 > limit:
                    self.pos = pos
                    self._truncated(33, field)
                end = (value >> (base - pos - 33)) & 0xFFFF
                if end < start:
                    raise self.error(
                        f"range entry ends at {end} before it starts at {start} ({field})", at=pos
                    )
                pos += 33
            else:
                end = start
                pos += 17
            spans.append((start, end))
        self.pos = pos
        return spans

    def expand_ids(self, spans: list[tuple[int, int]], field: str) -> frozenset[int]:
        """Turn inclusive spans into a set of ids, within this segment's expansion budget."""
        ordered = all(spans[i][1] < spans[i + 1][0] for i in range(len(spans) - 1))
        if not ordered:
            spans = _merge(spans)
        size = sum(end - start + 1 for start, end in spans)
        if size > self._id_budget:
            raise self.error(f"ranges expand to more than {MAX_EXPANDED_IDS} ids ({field})")
        self._id_budget -= size
        return frozenset(chain.from_iterable(range(start, end + 1) for start, end in spans))


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sort spans and fuse overlapping or touching ones, so each id is expanded once."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1] + 1:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged
