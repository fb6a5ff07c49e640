"""Bit-level reading of IAB payloads, and the one error every CMP string decoder raises.

IAB's TC strings and GPP sections are bit sequences written most-significant bit first and
carried as base64url without padding. This module owns turning such text into bits, reading
fixed-width integers, flags, bit fields, letters, deciseconds timestamps, Fibonacci-coded
integers and 16-bit ID ranges out of them, the :class:`IdSet` that holds decoded vendor and
purpose ids, and reporting every malformed or short input as a :class:`CmpStringError` that
names what was being read and at which bit. Reads are shifts and masks on a Python ``int``
built from a window of the decoded bytes (the whole payload for typical strings), so a read
costs the same wherever it is in the payload and decoding stays linear in the input length.
"""

from __future__ import annotations

import binascii
import itertools
import re
from collections.abc import Iterable, Iterator, Set
from datetime import UTC, datetime, timedelta
from typing import NoReturn, TypeVar

__all__ = ["BitReader", "CmpStringError", "IdSet"]

_T = TypeVar("_T")

_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
# bytes.translate is an order of magnitude faster than str.translate on short strings.
_TO_STANDARD_BASE64 = bytes.maketrans(b"-_", b"+/")
_ASCII_BITS = bytes.maketrans(b"01", b"\x00\x01")
_REVERSED_BITS = bytes(int(f"{byte:08b}"[::-1], 2) for byte in range(256))
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Bytes held as one int. Big enough for a typical core segment in one go; small enough that
# shifting it is cheap, where shifting a whole 100 KB payload per read would be quadratic.
_WINDOW_BYTES = 512
# Fibonacci code weights: bit i of a code word is worth F(i + 2) = 1, 2, 3, 5, 8, ...
_FIBONACCI_BITS = 64
_FIBONACCI = [1, 2]
while len(_FIBONACCI) < _FIBONACCI_BITS:
    _FIBONACCI.append(_FIBONACCI[-1] + _FIBONACCI[-2])


class CmpStringError(ValueError):
    """A TC or GPP string that cannot be decoded; the message says what was wrong and where."""


class IdSet(Set[int]):
    """An immutable set of non-negative ids, stored as an ``int`` whose bit *k* means id *k*.

    Decoded strings carry hundreds of vendor ids per field; building a ``frozenset`` for each
    would cost more than the rest of decoding, while a bit mask is built with a handful of
    big-int operations and still answers ``id in ids`` with one shift. It behaves as a
    read-only set: ``in``, ``len``, iteration in ascending order, ``==`` and ``hash`` agreeing
    with ``frozenset``, and the set operators (which return frozensets).
    """

    __slots__ = ("_mask",)

    def __init__(self, ids: Iterable[int] = ()) -> None:
        mask = 0
        for item in ids:
            if item < 0:
                raise ValueError(f"ids are non-negative, got {item}")
            mask |= 1 << item
        self._mask = mask

    @classmethod
    def from_mask(cls, mask: int) -> IdSet:
        """The ids whose bits are set in ``mask`` (bit k for id k)."""
        if mask < 0:
            raise ValueError("an id mask is non-negative")
        return _id_set(mask)

    @classmethod
    def from_spans(cls, spans: Iterable[tuple[int, int]]) -> IdSet:
        """The ids of inclusive ``(start, end)`` spans, which may overlap or be unordered."""
        mask = 0
        for start, end in spans:
            mask |= ((2 << (end - start)) - 1) << start
        return _id_set(mask)

    @classmethod
    def _from_iterable(cls, it: Iterable[_T]) -> frozenset[_T]:
        # Results of the set operators (&, |, -, ^) are plain frozensets: an operand may hold
        # things that are not ids.
        return frozenset(it)

    def __contains__(self, item: object) -> bool:
        return isinstance(item, int) and item >= 0 and (self._mask >> item) & 1 == 1

    def __iter__(self) -> Iterator[int]:
        # Lowest id first: reverse the binary digits, then keep the positions holding a '1'.
        digits = format(self._mask, "b")[::-1].encode("ascii").translate(_ASCII_BITS)
        return itertools.compress(itertools.count(), digits)

    def __len__(self) -> int:
        return self._mask.bit_count()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, IdSet):
            return self._mask == other._mask
        return super().__eq__(other)

    def __hash__(self) -> int:
        return self._hash()

    def spans(self) -> list[tuple[int, int]]:
        """The ids as ascending inclusive ``(start, end)`` runs of consecutive ids."""
        runs: list[list[int]] = []
        for item in self:
            if runs and runs[-1][1] == item - 1:
                runs[-1][1] = item
            else:
                runs.append([item, item])
        return [(start, end) for start, end in runs]

    def __repr__(self) -> str:
        text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in self.spans())
        return f"IdSet({{{text}}})"


def _id_set(mask: int) -> IdSet:
    # The decoders' constructor: skips __init__, which takes ids, not a mask.
    ids = object.__new__(IdSet)
    ids._mask = mask
    return ids


_EMPTY = _id_set(0)


class BitReader:
    """Sequential reader over the bits of one base64url-encoded segment.

    ``what`` names the string (``"TC string"``) and ``where`` the part being read
    (``"core segment"``); both only feed error messages.
    """

    __slots__ = ("_fast_end", "_pos", "_raw", "_window", "_window_end", "limit", "what", "where")

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
        padded = text.encode("ascii").translate(_TO_STANDARD_BASE64) + b"A" * (-len(text) % 4)
        self._raw = binascii.a2b_base64(padded)
        self.limit = len(text) * 6
        self._pos = 0
        self._load(0, 0)

    def _load(self, pos: int, n: int) -> None:
        """Hold, as ``_window``, whole bytes covering bits [pos, pos + n) where they exist.

        Reads only move forward, so the window never has to reach back before ``pos``.
        ``_fast_end`` is where the next read must stop to need neither a reload nor a
        truncation check: the end of the window or of the input, whichever comes first.
        """
        first = pos >> 3
        last = min(max(first + _WINDOW_BYTES, (pos + n + 7) >> 3), len(self._raw))
        self._window = int.from_bytes(self._raw[first:last], "big")
        self._window_end = last << 3
        self._fast_end = min(self._window_end, self.limit)

    @property
    def pos(self) -> int:
        """The next bit to read, from 0 at the start of the segment; it only moves forward."""
        return self._pos

    @property
    def remaining(self) -> int:
        """Bits left before the end of the segment (padding included)."""
        return self.limit - self._pos

    def error(self, message: str, *, at: int | None = None) -> CmpStringError:
        """Build an error located at ``at`` (default: the current bit) in this segment."""
        bit = self._pos if at is None else at
        return CmpStringError(f"{self.what}: {message} in {self.where} at bit {bit}")

    def _truncated(self, needed: int, field: str) -> NoReturn:
        raise CmpStringError(
            f"{self.what} truncated in {self.where} at bit {self._pos} ({field}): "
            f"needs {needed} bits, {self.limit - self._pos} left"
        )

    def read_int(self, n: int, field: str) -> int:
        """Read an unsigned ``n``-bit big-endian integer."""
        end = self._pos + n
        if end > self._fast_end:  # one comparison on the common path
            if end > self.limit:
                self._truncated(n, field)
            self._load(self._pos, n)
        self._pos = end
        return (self._window >> (self._window_end - end)) & ((1 << n) - 1)

    def read_bool(self, field: str) -> bool:
        return self.read_int(1, field) == 1

    def read_bitfield(self, n: int, field: str) -> IdSet:
        """Read ``n`` flags where flag *i* (from 0) says whether id *i + 1* is in the set."""
        flags = self.read_int(n, field) if n else 0
        if not flags:
            return _EMPTY
        # The first flag read (id 1) is the most significant bit. Left-align the flags to whole
        # bytes, mirror each byte and read them little-endian: the first flag lands on bit 0.
        pad = -n % 8
        data = (flags << pad).to_bytes((n + pad) // 8, "big").translate(_REVERSED_BITS)
        return _id_set(int.from_bytes(data, "little") << 1)

    def read_letters(self, count: int, field: str) -> str:
        """Read ``count`` 6-bit letters where 0 is 'A' and 25 is 'Z'."""
        start = self._pos
        packed = self.read_int(6 * count, field)
        codes = [(packed >> shift) & 63 for shift in range(6 * (count - 1), -1, -6)]
        if max(codes, default=0) > 25:
            code = max(codes)
            raise self.error(f"letter code {code} is not A-Z ({field})", at=start)
        return "".join(chr(65 + code) for code in codes)

    def read_datetime(self, field: str) -> datetime:
        """Read a 36-bit count of deciseconds since the Unix epoch as an aware UTC datetime."""
        return _EPOCH + timedelta(milliseconds=self.read_int(36, field) * 100)

    def read_int_list(self, count: int, width: int, field: str) -> tuple[int, ...]:
        """Read ``count`` consecutive ``width``-bit integers with one shift per value."""
        if self._pos + count * width > self.limit:
            for _ in range(count):  # one by one, so the error names the bit where input ends
                self.read_int(width, field)
        packed = self.read_int(count * width, field)
        item = (1 << width) - 1
        return tuple((packed >> shift) & item for shift in range((count - 1) * width, -1, -width))

    def read_fibonacci_int(self, field: str, max_bits: int = 48) -> int:
        """Read a Fibonacci-coded positive integer: weights 1, 2, 3, 5, ... ended by "11".

        A Zeckendorf code never holds two adjacent 1s, so the first "11" ends the code word.
        """
        start = self._pos
        width = min(max_bits + 1, _FIBONACCI_BITS, self.limit - start)
        window = format(self.read_int(width, field), f"0{width}b") if width > 0 else ""
        last = window.find("11")
        if last < 0:
            if width == self.limit - start:
                self._truncated(1, field)  # pos is now at the end of the input
            raise self.error(
                f"Fibonacci integer ({field}) has no end within {width} bits", at=start
            )
        self._pos = start + last + 2
        return sum(_FIBONACCI[i] for i, bit in enumerate(window[: last + 1]) if bit == "1")

    def read_range_ids(self, field: str) -> IdSet:
        """Read a 12-bit entry count, then entries of IsARange(1) StartId(16) [EndId(16)].

        Entries are peeked 17 or 33 bits at a time rather than field by field, because
        range-encoded vendor lists are the hot path of TC string decoding.
        """
        entries = self.read_int(12, field)
        limit, pos = self.limit, self._pos
        window, window_end, fast_end = self._window, self._window_end, self._fast_end
        mask = 0
        for _ in range(entries):
            if pos + 33 > fast_end:
                if pos + 17 > limit:
                    self._pos = pos
                    self._truncated(17, field)
                self._load(pos, 33)  # near the input's end this holds fewer than 33 bits
                window, window_end, fast_end = self._window, self._window_end, self._fast_end
            head = (window >> (window_end - pos - 17)) & 0x1FFFF
            start = head & 0xFFFF
            if head >> 16:
                if pos + 33 > limit:
                    self._pos = pos
                    self._truncated(33, field)
                end = (window >> (window_end - pos - 33)) & 0xFFFF
                if end < start:
                    raise self.error(
                        f"range entry ends at {end} before it starts at {start} ({field})", at=pos
                    )
                mask |= ((2 << (end - start)) - 1) << start
                pos += 33
            else:
                mask |= 1 << start
                pos += 17
        self._pos = pos
        return _id_set(mask)
