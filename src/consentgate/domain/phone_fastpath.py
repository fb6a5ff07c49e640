"""A fast path for bulk phone normalisation, compiled from phonenumbers' own metadata.

``phonenumbers.parse`` + ``is_valid_number`` cost 50-100 µs a number, most of it generic
machinery (RFC 3966, extensions, vanity letters, object construction): a million-number
audience would spend more than a minute there. For the plain shapes audiences come in —
ASCII digits, spaces, ``-``, ``.``, brackets, at most one leading ``+`` — the outcome depends
only on a few facts of the region's metadata: the country code, the international (IDD) and
national prefixes, the general pattern and possible lengths, and the national-number
pattern of each number type. This module reads those facts through ``PhoneMetadata`` once
per region and per country code and replays the library's own steps on them: country-code
extraction, national-prefix stripping (with its viability checks and transform rules), the
length test, the region lookup of shared country codes, and the number-type test of
``is_valid_number``. Validity stays phonenumbers' definition: every pattern is the
library's; nothing here knows a numbering plan.

Two layers: a *quick* regex per region (and per country code, for "+" input) that
recognises in one call the common case — a national prefix, or none, then a number valid
in the code's first region — and answers only "valid, this E.164"; and the *replay*, step
by step, which decides every other plain-shaped number. Anything outside the plain shapes
(letters, extensions, RFC 3966, an IDD prefix, an unknown or non-geographic country code, a
region without metadata) is left undecided for the full parse. A property test holds both
layers to ``parse`` + ``is_possible_number`` + ``is_valid_number`` + E.164 formatting.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from phonenumbers import (
    COUNTRY_CODE_TO_REGION_CODE,
    SUPPORTED_REGIONS,
    PhoneMetadata,
    PhoneNumberDesc,
)

INVALID = ""
"""The fast path's answer for a number phonenumbers would reject."""

FastPath = Callable[[str], str | None]
"""raw → E.164 string, :data:`INVALID`, or None (undecided: run the full parse)."""

_MAX_RAW = 64  # normalise_phone rejects longer input outright
_MAX_NSN = 17  # phonenumberutil._MAX_LENGTH_FOR_NSN
_TABLE = 2 * _MAX_RAW  # lengths tabulated; a transform rule may lengthen a number a little
_FORMATTING = str.maketrans("", "", " -.()")
_BACKREFERENCE = re.compile(r"\\[1-9]|\(\?P=")  # would not survive being embedded
# phonenumberutil._test_number_length results (the ones its callers tell apart)
_POSSIBLE, _LOCAL_ONLY, _TOO_SHORT, _TOO_LONG, _INVALID_LENGTH = range(5)
_TYPE_DESCS = (  # phonenumberutil._number_type_helper's order
    "premium_rate",
    "toll_free",
    "shared_cost",
    "voip",
    "personal_number",
    "pager",
    "uan",
    "voicemail",
    "fixed_line",
)


def _length_results(general: PhoneNumberDesc) -> tuple[int, ...]:
    """_test_number_length(number, metadata) by length (it depends on the length only: the
    possible and local-only lengths of the general description)."""
    possible = list(general.possible_length)
    local = general.possible_length_local_only
    out = []
    for n in range(_TABLE):
        if n in local:
            out.append(_LOCAL_ONLY)
        elif possible[0] == n:
            out.append(_POSSIBLE)
        elif possible[0] > n:
            out.append(_TOO_SHORT)
        elif possible[-1] < n:
            out.append(_TOO_LONG)
        else:
            out.append(_POSSIBLE if n in possible[1:] else _INVALID_LENGTH)
    return tuple(out)


def _pattern(text: str | None) -> re.Pattern[str] | None:
    return re.compile(text) if text else None


@dataclass(frozen=True, slots=True)
class _Plan:
    """One region's parsing facts: what parse() reads from its PhoneMetadata."""

    country_code: int
    general: str | None  # general_desc pattern (matched whole, lengths unchecked)
    general_re: re.Pattern[str] | None
    lengths: tuple[int, ...]  # _test_number_length by length
    national_prefix: str | None  # national_prefix_for_parsing
    national_prefix_re: re.Pattern[str] | None
    transform: str | None  # national_prefix_transform_rule

    @classmethod
    def of(cls, metadata: PhoneMetadata) -> _Plan | None:
        desc = metadata.general_desc
        if desc is None or not desc.possible_length or metadata.country_code is None:
            return None
        general = desc.national_number_pattern or None
        prefix = metadata.national_prefix_for_parsing or None
        transform = metadata.national_prefix_transform_rule or None
        prefix_re = _pattern(prefix)
        if transform is not None and prefix_re is not None and prefix_re.groups == 0:
            return None  # the library would index an empty groups() tuple: leave it to it
        return cls(
            metadata.country_code,
            general,
            _pattern(general),
            _length_results(desc),
            prefix,
            prefix_re,
            transform,
        )

    def length(self, number: str) -> int:
        n = len(number)
        return self.lengths[n] if n < _TABLE else _TOO_LONG

    def viable(self, number: str) -> bool:
        """phonenumberutil._match_national_number(number, general_desc, False)."""
        return self.general_re is not None and self.general_re.fullmatch(number) is not None

    def strip_national_prefix(self, number: str) -> str:
        """phonenumberutil._maybe_strip_national_prefix_carrier_code, the number part."""
        if not number or self.national_prefix_re is None:
            return number
        match = self.national_prefix_re.match(number)
        if match is None:
            return number
        viable_original = self.viable(number)
        if self.transform is None or match.groups()[-1] is None:
            rest = number[match.end() :]
            return number if viable_original and not self.viable(rest) else rest
        transformed = self.national_prefix_re.sub(self.transform, number, count=1)
        return number if viable_original and not self.viable(transformed) else transformed

    def stripped_for_parse(self, national: str) -> str:
        """parse() strips a national prefix only if what remains has a plausible length."""
        stripped = self.strip_national_prefix(national)
        return stripped if self.length(stripped) in (_POSSIBLE, _TOO_LONG) else national


def _typed(metadata: PhoneMetadata, n: int, end: str = "\\Z") -> str | None:
    """A regex (text) fullmatching exactly the numbers of length ``n`` for which
    _number_type_helper(number, metadata) is not UNKNOWN: the general description (length
    and pattern) and at least one number type (length and pattern); None if none can."""
    general = metadata.general_desc
    if general is None or not general.national_number_pattern:
        return None
    if general.possible_length and n not in general.possible_length:
        return None
    names = ["mobile", *reversed(_TYPE_DESCS)]  # any type will do: likeliest first
    if metadata.same_mobile_and_fixed_line_pattern:
        names.remove("mobile")  # _number_type_helper never tests mobile then
    alternatives = [
        f"(?:{d.national_number_pattern})"
        for d in (getattr(metadata, name) for name in names)
        if d is not None
        and d.national_number_pattern
        and (not d.possible_length or n in d.possible_length)
    ]
    if not alternatives:
        return None
    return f"(?=(?:{general.national_number_pattern}){end})(?:{'|'.join(alternatives)})"


@dataclass(frozen=True, slots=True)
class _CountryCode:
    """What is_possible_number and is_valid_number need for one country calling code."""

    prefix: str  # "+44"
    plan: _Plan  # of the main region: parse() strips with it once the code is known
    possible: frozenset[int]  # lengths is_possible_number accepts (main region)
    # (leading_digits or None, typed patterns by length) per region, in the library's order
    regions: tuple[tuple[re.Pattern[str] | None, dict[int, re.Pattern[str]]], ...]
    regions_list: tuple[str, ...]  # COUNTRY_CODE_TO_REGION_CODE[code]
    quick: re.Pattern[str] | None  # "+"-input remainder after the code, see _quick

    def valid(self, nsn: str) -> bool:
        """is_possible_number and is_valid_number: region_code_for_number (the first region
        whose leading digits match, or whose type test passes), then that region's test."""
        n = len(nsn)
        if n not in self.possible:
            return False
        if len(self.regions) == 1:
            pattern = self.regions[0][1].get(n)
            return pattern is not None and pattern.fullmatch(nsn) is not None
        for leading, by_length in self.regions:
            if leading is not None and not leading.match(nsn):
                continue
            pattern = by_length.get(n)
            typed = pattern is not None and pattern.fullmatch(nsn) is not None
            if typed or leading is not None:
                return typed
        return False

    def finish(self, plan: _Plan, national: str) -> str | None:
        """The rest of parse() once the code is known, then validity and E.164 format. The
        national significant number is ``national`` itself, leading zeros included (parse's
        italian_leading_zero bookkeeping restores exactly the zeros it saw)."""
        if len(national) < 2:
            return None
        national = plan.stripped_for_parse(national)
        if len(national) > _MAX_NSN:
            return INVALID
        return self.prefix + national if self.valid(national) else INVALID


def _first_region(regions: tuple[str, ...], *plans: _Plan, end: str = "\\Z") -> str | None:
    """Regex text for "valid, and region_code_for_number picks the first region": the
    quick layer's answer. Only lengths that ``plans`` (the main region's, the one parse()
    strips with) call possible: parse() then keeps a stripped prefix and
    is_possible_number agrees."""
    metadata = PhoneMetadata.metadata_for_region(regions[0], None)
    if metadata is None:
        return None
    by_length = []
    for n in range(_MAX_NSN, 2, -1):  # longest first: mobile numbers usually are
        possible = all(plan.lengths[n] == _POSSIBLE for plan in plans)
        typed = _typed(metadata, n, end) if possible else None
        if typed is not None:
            by_length.append(f"(?=\\d{{{n}}}{end}){typed}")
    if not by_length:
        return None
    leading = metadata.leading_digits if len(regions) > 1 else None
    lead = "" if leading is None else f"(?=(?:{leading}))"
    return f"{lead}(?:{'|'.join(by_length)})"


def _quick(
    plan: _Plan, nsn: str, guard: str = "", end: str = "\\Z", flags: int = 0
) -> re.Pattern[str] | None:
    """One regex for parse()'s national-prefix step followed by the validity test, for the
    common cases only: the national prefix matched (an atomic group: its first match, as
    ``re.match`` finds it) and the whole number is not viable as it stands, so the prefix
    goes; or no national prefix at all. Either way what follows must be valid (``nsn``).
    Everything else (a viable number that starts like a prefix, transform rules) fails to
    match and goes to the replay."""
    if plan.transform is not None:
        return None
    parts = [guard, plan.national_prefix or "", plan.general or "", nsn]
    if any(_BACKREFERENCE.search(p) for p in parts):
        return None
    if plan.national_prefix is None:
        prefix = ""
    else:
        not_viable = "" if plan.general is None else f"(?!(?:{plan.general}){end})"
        prefix = f"(?:{not_viable}(?>{plan.national_prefix})|(?!{plan.national_prefix}))"
    return re.compile(f"{guard}{prefix}(?P<nsn>{nsn})", flags)


@lru_cache(maxsize=512)
def _country(code: int) -> _CountryCode | None:
    regions = COUNTRY_CODE_TO_REGION_CODE.get(code)
    if not regions or regions[0] == "001":
        return None  # non-geographic entities: left to the full parse
    main = PhoneMetadata.metadata_for_region(regions[0], None)
    plan = None if main is None else _Plan.of(main)
    if plan is None:
        return None
    compiled = []
    for region in regions:
        metadata = PhoneMetadata.metadata_for_region(region.upper(), None)
        if metadata is not None:
            leading = metadata.leading_digits
            typed = {n: _typed(metadata, n) for n in range(1, _MAX_NSN + 1)}
            compiled.append(
                (
                    None if leading is None or len(regions) == 1 else re.compile(leading),
                    {n: re.compile(t) for n, t in typed.items() if t is not None},
                )
            )
    possible = frozenset(
        n for n, r in enumerate(plan.lengths) if r in (_POSSIBLE, _LOCAL_ONLY) and n <= _MAX_NSN
    )
    first = _first_region(regions, plan)
    quick = None if first is None else _quick(plan, first)
    return _CountryCode(f"+{code}", plan, possible, tuple(compiled), regions, quick)


def _country_code_table() -> dict[str, tuple[int, int]]:
    """phonenumberutil._extract_country_code for every three leading digits (input here has
    at least three): → (code, its length), or (0, 0)."""
    table = {}
    for i in range(1000):
        digits = f"{i:03d}"
        found = (0, 0)
        if digits[0] != "0":
            for k in (1, 2, 3):
                if int(digits[:k]) in COUNTRY_CODE_TO_REGION_CODE:
                    found = (int(digits[:k]), k)
                    break
        table[digits] = found
    return table


_CODES = _country_code_table()


@lru_cache(maxsize=256)
def fast_path(region: str | None) -> FastPath:
    """The compiled fast path for numbers given in ``region`` (national or international
    format; None: international only)."""
    metadata = (
        PhoneMetadata.metadata_for_region(region.upper(), None)
        if region in SUPPORTED_REGIONS
        else None
    )
    home = None if metadata is None else _Plan.of(metadata)
    home_country = None if home is None else _country(home.country_code)
    idd = None if metadata is None else metadata.international_prefix
    idd_match = None if idd is None else re.compile(idd).match
    home_code = "" if home is None else str(home.country_code)
    main_region = None if home is None else COUNTRY_CODE_TO_REGION_CODE[home.country_code][0]
    # National input: not an IDD prefix, not the home code (both: replay), then _quick.
    first = (
        None
        if home is None or home_country is None
        else _first_region(home_country.regions_list, home, home_country.plan)
    )
    quick_home = (
        None
        if home is None or first is None
        else _quick(home, first, guard=("" if idd is None else f"(?!{idd})") + f"(?!{home_code})")
    )
    quick_home_match = None if quick_home is None else quick_home.fullmatch
    home_prefix = "" if home_country is None else home_country.prefix
    codes = _CODES

    def normalise(raw: str) -> str | None:
        if raw.__class__ is not str or len(raw) > _MAX_RAW:
            return None
        text = raw.replace(" ", "")
        if not (text.isdigit() or (text[:1] == "+" and text[1:].isdigit())):
            text = text.translate(_FORMATTING)
        if not text.isascii():
            return None  # other digits and characters: the full parse knows them
        if text.isdigit():
            if quick_home_match is not None and len(text) > 2:
                match = quick_home_match(text)
                if match is not None:
                    return home_prefix + match["nsn"]
            return national(text)
        if text[:1] != "+" or len(text) < 4 or not text[1:].isdigit():
            return None
        code, k = codes[text[1:4]]
        country = _country(code) if code else None
        if country is None:
            return None  # no such code (parse() retries without the "+"), or non-geographic
        if country.quick is not None:
            match = country.quick.fullmatch(text, 1 + k)
            if match is not None:
                return country.prefix + match["nsn"]
        return country.finish(country.plan, text[1 + k :])

    def national(text: str) -> str | None:
        """The replay for digits without "+" (parse's default-region case)."""
        if home is None or home_country is None or len(text) < 3:
            return None
        if idd_match is not None and idd_match(text):
            return None  # an international prefix: the full parse
        if text.startswith(home_code):
            # _maybe_extract_country_code: the home code without "+" counts if the number
            # reads better without it, or was too long with it.
            stripped = home.strip_national_prefix(text[len(home_code) :])
            if (not home.viable(text) and home.viable(stripped)) or home.length(text) == _TOO_LONG:
                plan = home if main_region == region else home_country.plan
                return home_country.finish(plan, stripped)
        return home_country.finish(home, text)

    return normalise


BatchPath = Callable[[Sequence[str]], list[str | None]]
"""raws → for each, its E.164 form or None (not decided here: ask :func:`fast_path`)."""


@lru_cache(maxsize=256)
def batch_path(region: str | None) -> BatchPath:
    """The quick layer for a whole batch at once: the numbers are joined into one text, one
    line each, and a single ``findall`` of a multi-line regex — the quick regex, or else
    the rest of the line — yields per line the national significant number the quick
    regex accepted (national format, or "+" and the home code) or "". The regex engine
    walks the batch without a Python call per number. Lines the quick regex does not take
    are not decided here (None): they go to :func:`fast_path`, then the full parse."""
    metadata = (
        PhoneMetadata.metadata_for_region(region.upper(), None)
        if region in SUPPORTED_REGIONS
        else None
    )
    home = None if metadata is None else _Plan.of(metadata)
    country = None if home is None else _country(home.country_code)
    if metadata is None or home is None or country is None:
        return _undecided
    code = str(home.country_code)
    first = _first_region(country.regions_list, home, country.plan, end="$")
    idd = metadata.international_prefix
    lead = ("" if idd is None else f"(?!{idd})") + f"(?!{code})"
    if country.plan == home and _CODES[(code + "00")[:3]] == (home.country_code, len(code)):
        lead = f"(?:\\+{code}|{lead})"  # "+44…" strips and validates the same way here
    quick = None if first is None else _quick(home, first, guard=f"^{lead}", end="$")
    if quick is None:
        return _undecided
    lines = re.compile(f"(?:{quick.pattern}$|^.*$)", re.MULTILINE | re.ASCII)
    if lines.groups != 1:
        return _undecided  # a capturing group in the metadata: findall would give tuples
    findall, prefix = lines.findall, country.prefix

    def batch(raws: Sequence[str]) -> list[str | None]:
        if not raws:
            return []
        try:
            text = "\n".join(raws)
        except TypeError:
            return _undecided(raws)
        if text.count("\n") != len(raws) - 1 or max(map(len, raws)) > _MAX_RAW:
            return _undecided(raws)  # a value spanning lines, or too long for the parse
        found = findall(text.replace(" ", ""))
        if len(found) != len(raws):
            return _undecided(raws)
        return [prefix + nsn if nsn else None for nsn in found]

    return batch


def _undecided(raws: Sequence[str]) -> list[str | None]:
    return [None] * len(raws)
