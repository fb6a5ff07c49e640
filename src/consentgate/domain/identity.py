"""Identifier normalisation: phone numbers to E.164, e-mail addresses to one canonical form.

The raw value lives only inside an :class:`Identifier` for the span of a request; its
``repr`` never shows it, so it cannot leak through logs or tracebacks, and errors name the
field, never the value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import phonenumbers

from consentgate.domain import phone_fastpath
from consentgate.errors import InvalidInput


class IdentifierKind(StrEnum):
    PHONE = "phone"
    EMAIL = "email"


@dataclass(frozen=True, slots=True)
class Identifier:
    """A normalised identifier. ``value`` is the canonical string that gets keyed-hashed."""

    kind: IdentifierKind
    value: str = field(repr=False)

    def __repr__(self) -> str:
        return f"Identifier(kind={self.kind.value}, value=<redacted>)"

    __str__ = __repr__


def normalise_phone(raw: str, region: str | None, *, field: str = "phone") -> Identifier:
    """Parse ``raw`` (international, or national in ``region``) into E.164.

    Unparseable, impossible or unallocated numbers raise
    :class:`InvalidInput` naming ``field``; the number itself is never echoed.
    """
    if not isinstance(raw, str) or not raw.strip() or len(raw) > 64:
        raise InvalidInput(f"{field} must be a phone number", field=field)
    try:
        parsed = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        raise InvalidInput(
            f"{field} could not be parsed as a phone number"
            + ("" if region else " (give it in international format, +<country code>...)"),
            field=field,
        ) from None
    # Valid, not merely possible: a number outside every allocated range cannot receive a
    # message. (Known trade-off: bundled metadata can lag a newly allocated range.)
    if not phonenumbers.is_possible_number(parsed) or not phonenumbers.is_valid_number(parsed):
        raise InvalidInput(f"{field} is not a valid phone number", field=field)
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    return Identifier(IdentifierKind.PHONE, e164)


def normalise_email(raw: str, *, field: str = "email") -> Identifier:
    """Lower-case, trim, IDNA-encode the domain. Provider-specific rewrites (dots, +tags) are
    not applied: they are not universal and would merge different people."""
    if not isinstance(raw, str) or len(raw) > 320:
        raise InvalidInput(f"{field} must be an e-mail address", field=field)
    text = raw.strip()
    local, sep, domain = text.rpartition("@")
    if (
        not sep
        or not local
        or len(local) > 64
        or "@" in local
        or any(c.isspace() for c in text)
        or "." not in domain
        or domain.startswith(".")
        or domain.endswith(".")
        or ".." in domain
    ):
        raise InvalidInput(f"{field} is not a valid e-mail address", field=field)
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        raise InvalidInput(f"{field} has an invalid domain", field=field) from None
    return Identifier(IdentifierKind.EMAIL, f"{local.lower()}@{ascii_domain.lower()}")


@dataclass(frozen=True, slots=True)
class NormalisedPhones:
    """A bulk normalisation, aligned with its input: ``values[i]`` is row ``i``'s E.164 form,
    or None when it is not a valid number (its position is also in ``invalid``)."""

    values: list[str | None] = field(repr=False)
    invalid: list[int]

    def __repr__(self) -> str:
        return f"NormalisedPhones({len(self.values)} rows, {len(self.invalid)} invalid)"


def normalise_phones(raws: Sequence[str], region: str | None) -> NormalisedPhones:
    """:func:`normalise_phone` for many numbers, with the same answers: the fast paths
    compiled from phonenumbers' metadata (:mod:`consentgate.domain.phone_fastpath`: the
    whole batch through one regex, then number by number) decide plain shapes; whatever
    they leave undecided goes through the full parse. Invalid rows are reported, never
    dropped."""
    values = phone_fastpath.batch_path(region)(raws)
    invalid: list[int] = []
    if None in values:
        fast = phone_fastpath.fast_path(region)
        for i, value in enumerate(values):
            if value is not None:
                continue
            value = fast(raws[i])
            if value is None:
                try:
                    value = normalise_phone(raws[i], region).value
                except InvalidInput:
                    value = phone_fastpath.INVALID
            if value == phone_fastpath.INVALID:
                invalid.append(i)
            else:
                values[i] = value
    return NormalisedPhones(values, invalid)


def normalise_phone_bulk(raw: str, region: str | None, *, field: str = "phone") -> Identifier:
    """:func:`normalise_phone` through the bulk fast path, for one number (same answers)."""
    value = phone_fastpath.fast_path(region)(raw)
    if value is None:
        return normalise_phone(raw, region, field=field)
    if value == phone_fastpath.INVALID:
        raise InvalidInput(f"{field} is not a valid phone number", field=field)
    return Identifier(IdentifierKind.PHONE, value)
