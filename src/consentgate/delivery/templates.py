"""Message templates and their PII tokens: the ``{{name}}`` syntax and its validation, filling
tokens for the encrypted modes (:func:`render`), and the plain-text bodies of the fallback
modes (:func:`redact`), which are built from the template alone so that no variable value —
the personal data — can reach an unencrypted channel. Pure functions over plain data; storing
templates and choosing the mode belong elsewhere (the template store, the planner).

Syntax: a token is ``{{`` optional whitespace, a name matching ``[a-z_][a-z0-9_]*``, optional
whitespace, ``}}``. A lone ``{`` or ``}`` is ordinary text; ``{{`` and ``}}`` only ever delimit
tokens, so one without its partner is an error. Token values are substituted in a single
pass: a value that itself looks like ``{{token}}`` is left as text, never expanded.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from consentgate.errors import InvalidInput

MAX_TEXT_CHARS = 2000
MAX_TOKENS = 20  # distinct token names per template, text and rich card together
MAX_CARD_DEPTH = 8

TOKEN_NAME = re.compile(r"[a-z_][a-z0-9_]*")

#: The body of a ``secure_link`` message: says nothing about the content, on purpose.
SECURE_LINK_TEXT = "You have a new secure message. Open it here:"
#: Used by ``sms_redacted`` when nothing is left of the template once its tokens are removed.
REDACTED_FALLBACK_TEXT = "You have a new message. Open it here:"

# Line breaks inside a value become spaces, so a value cannot forge extra lines of the message.
_BREAKS = frozenset("\t\n\v\f\r\x1c\x1d\x1e\x85\u2028\u2029")
# Bidi embeddings, overrides and isolates could reorder the surrounding template text on screen.
_BIDI = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_CLOSING_PUNCT = tuple(",.;:!?)")


class TemplateError(InvalidInput, ValueError):
    """A template, a variable or a link is unusable. ``problem`` is a stable machine code:
    ``unbalanced_braces``, ``bad_token_name``, ``too_many_tokens``, ``text_too_long``,
    ``not_a_string``, ``bad_rich_card``, ``missing_variable``, ``bad_variable`` or
    ``bad_link``."""

    def __init__(self, problem: str, detail: str, *, field: str) -> None:
        super().__init__(detail, field=field, extra={"problem": problem})
        self.problem = problem


@dataclass(frozen=True, slots=True)
class _Token:
    start: int
    end: int
    name: str


def _scan(text: str, where: str) -> list[_Token]:
    """Every token of ``text`` in order; raises on anything that is not well formed."""
    if not isinstance(text, str):
        raise TemplateError("not_a_string", f"{where} must be a string", field=where)
    if len(text) > MAX_TEXT_CHARS:
        raise TemplateError(
            "text_too_long",
            f"{where} is {len(text)} characters long; the limit is {MAX_TEXT_CHARS}",
            field=where,
        )
    tokens: list[_Token] = []
    pos = 0
    while True:
        opening = text.find("{{", pos)
        closing = text.find("}}", pos)
        if closing != -1 and (opening == -1 or closing < opening):
            raise TemplateError(
                "unbalanced_braces",
                f"{where}: '}}}}' at offset {closing} closes nothing",
                field=where,
            )
        if opening == -1:
            return tokens
        end = text.find("}}", opening + 2)
        if end == -1:
            raise TemplateError(
                "unbalanced_braces",
                f"{where}: '{{{{' at offset {opening} is never closed",
                field=where,
            )
        inner = text[opening + 2 : end]
        if "{{" in inner:
            raise TemplateError(
                "unbalanced_braces",
                f"{where}: '{{{{' at offset {opening} is never closed",
                field=where,
            )
        name = inner.strip()
        if not TOKEN_NAME.fullmatch(name):
            shown = name if len(name) <= 40 else name[:40] + "…"
            raise TemplateError(
                "bad_token_name",
                f"{where}: token {shown!r} at offset {opening} is not a name "
                "(lower-case letters, digits and '_', not starting with a digit)",
                field=where,
            )
        tokens.append(_Token(opening, end + 2, name))
        pos = end + 2


def _distinct(names: Iterator[str]) -> list[str]:
    return list(dict.fromkeys(names))


def _check_count(names: list[str], where: str) -> None:
    if len(names) > MAX_TOKENS:
        raise TemplateError(
            "too_many_tokens",
            f"{where} uses {len(names)} distinct tokens; the limit is {MAX_TOKENS}",
            field=where,
        )


def parse_tokens(text: str) -> list[str]:
    """The distinct token names of ``text``, in order of first appearance.

    Raises :class:`TemplateError` if the text is too long, has unbalanced ``{{``/``}}``, a bad
    token name or more than :data:`MAX_TOKENS` distinct tokens.
    """
    names = _distinct(t.name for t in _scan(text, "text"))
    _check_count(names, "text")
    return names


def _card_strings(value: object, where: str, depth: int = 0) -> Iterator[tuple[str, str]]:
    """``(path, string)`` for every string value in a rich card; validates its shape."""
    if depth > MAX_CARD_DEPTH:
        raise TemplateError("bad_rich_card", f"{where} is nested too deeply", field=where)
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TemplateError("bad_rich_card", f"{where} has a non-string key", field=where)
            yield from _card_strings(item, f"{where}.{key}", depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _card_strings(item, f"{where}[{index}]", depth + 1)
    elif value is not None and not isinstance(value, bool | int | float):
        raise TemplateError(
            "bad_rich_card", f"{where} holds a {type(value).__name__}, not JSON", field=where
        )


def _map_card(value: Any, fill: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return fill(value)
    if isinstance(value, Mapping):
        return {key: _map_card(item, fill) for key, item in value.items()}
    if isinstance(value, list):
        return [_map_card(item, fill) for item in value]
    return value


@dataclass(frozen=True, slots=True)
class Template:
    """A validated template. ``tokens`` are its distinct token names, text first, then the rich
    card's string values (title, description, ...) in document order."""

    template_id: str
    name: str
    text: str
    rich_card: dict[str, Any] | None
    sensitive: bool
    tokens: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = [t.name for t in _scan(self.text, "text")]
        if self.rich_card is not None:
            if not isinstance(self.rich_card, Mapping):
                raise TemplateError(
                    "bad_rich_card", "rich_card must be an object", field="rich_card"
                )
            for where, value in _card_strings(self.rich_card, "rich_card"):
                names.extend(t.name for t in _scan(value, where))
        distinct = _distinct(iter(names))
        _check_count(distinct, "template")
        object.__setattr__(self, "tokens", tuple(distinct))


def clean_value(value: str) -> str:
    """A variable value fit for plain text: control characters and bidi overrides removed,
    line breaks turned into spaces."""
    out: list[str] = []
    for char in value:
        if char in _BREAKS:
            out.append(" ")
        elif char not in _BIDI and unicodedata.category(char) != "Cc":
            out.append(char)
    return "".join(out)


def _fill(text: str, values: Mapping[str, str]) -> str:
    out: list[str] = []
    pos = 0
    for token in _scan(text, "text"):
        out.append(text[pos : token.start])
        out.append(values[token.name])
        pos = token.end
    out.append(text[pos:])
    return "".join(out)


def render(template: Template, variables: Mapping[str, object]) -> dict[str, Any]:
    """The message for an encrypted mode: ``{"text": ..., "rich_card": ... | None}`` with every
    token filled. Variables the template does not use are ignored."""
    missing = [name for name in template.tokens if name not in variables]
    if missing:
        listed = ", ".join(repr(name) for name in missing)
        raise TemplateError(
            "missing_variable",
            f"variable {listed} is missing"
            if len(missing) == 1
            else f"variables {listed} are missing",
            field=f"variables.{missing[0]}",
        )
    values: dict[str, str] = {}
    for name in template.tokens:
        value = variables[name]
        if not isinstance(value, str):
            # No value in the message: it is personal data (DESIGN §3).
            raise TemplateError(
                "bad_variable", f"variable {name!r} must be a string", field=f"variables.{name}"
            )
        values[name] = clean_value(value)

    def fill(text: str) -> str:
        return _fill(text, values)

    card = None if template.rich_card is None else _map_card(template.rich_card, fill)
    return {"text": fill(template.text), "rich_card": card}


def _check_link(secure_link: str) -> None:
    if (
        not isinstance(secure_link, str)
        or not secure_link.startswith("https://")
        or len(secure_link) <= len("https://")
        or any(char.isspace() or unicodedata.category(char)[0] == "C" for char in secure_link)
    ):
        raise TemplateError(
            "bad_link", "secure_link must be an https:// URL without spaces", field="secure_link"
        )


def _strip_tokens(text: str) -> str:
    pieces: list[str] = []
    pos = 0
    for token in _scan(text, "text"):
        pieces.append(text[pos : token.start])
        pos = token.end
    pieces.append(text[pos:])
    body = pieces[0]
    for piece in pieces[1:]:
        # "Hi {{first_name}}, ..." reads "Hi, ..." rather than "Hi , ...".
        if piece.startswith(_CLOSING_PUNCT):
            body = body.rstrip(" \t")
        body += piece
    lines = (re.sub(r"[ \t]{2,}", " ", line).strip(" \t") for line in body.split("\n"))
    return "\n".join(lines).strip()


def secure_link_text(secure_link: str) -> str:
    """The whole ``secure_link`` message: a fixed neutral sentence and the link."""
    _check_link(secure_link)
    return f"{SECURE_LINK_TEXT} {secure_link}"


def redact(template: Template, secure_link: str) -> str:
    """The plain-text body of a fallback message.

    Sensitive templates never show their text outside an encrypted mode: they get the
    ``secure_link`` body. Others get the ``sms_redacted`` body: the template text with every
    token removed, then the link on its own line. It is built from the template alone, so no
    variable value can be in it; rich cards are never part of a fallback.
    """
    _check_link(secure_link)
    if template.sensitive:
        return secure_link_text(secure_link)
    body = _strip_tokens(template.text)
    return f"{body}\n{secure_link}" if body else f"{REDACTED_FALLBACK_TEXT} {secure_link}"
