"""Templates and PII tokens: the token syntax and its errors, filling tokens for the encrypted
modes, and the fallback bodies, which must never carry a variable value."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consentgate.delivery.templates import (
    MAX_TEXT_CHARS,
    MAX_TOKENS,
    REDACTED_FALLBACK_TEXT,
    SECURE_LINK_TEXT,
    Template,
    TemplateError,
    clean_value,
    parse_tokens,
    redact,
    render,
    secure_link_text,
)
from consentgate.errors import InvalidInput

LINK = "https://m.example.test/s/Zk3pQ"
# Token names: [a-z_][a-z0-9_]*, from a small alphabet so that repeats happen.
names = st.builds(
    lambda head, tail: head + tail, st.sampled_from("abz_"), st.text("az09_", max_size=5)
)


def template(
    text: str, *, rich_card: dict[str, Any] | None = None, sensitive: bool = False
) -> Template:
    return Template("tpl-1", "order update", text, rich_card, sensitive)


# --- tokens -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", []),
        ("no tokens here", []),
        ("Hi {{first_name}}", ["first_name"]),
        ("Hi {{ first_name }} and {{\tlast_name\t}}", ["first_name", "last_name"]),
        ("{{a}}{{b}}{{a}}", ["a", "b"]),  # distinct, in order of first appearance
        ("{{_x1}} {{x_2_}}", ["_x1", "x_2_"]),
        ("a lone { or } is text: {x} }{", []),
        ("{{x}}}", ["x"]),  # the first '}}' closes the token; the last '}' is text
    ],
)
def test_parse_tokens(text: str, expected: list[str]) -> None:
    assert parse_tokens(text) == expected


@pytest.mark.parametrize(
    ("text", "problem", "mentions"),
    [
        ("Hi {{first_name", "unbalanced_braces", "never closed"),
        ("Hi first_name}}", "unbalanced_braces", "closes nothing"),
        ("Hi }} {{x}}", "unbalanced_braces", "closes nothing"),
        ("{{a {{b}}", "unbalanced_braces", "never closed"),
        ("{{}}", "bad_token_name", "''"),
        ("{{   }}", "bad_token_name", "not a name"),
        ("{{First}}", "bad_token_name", "'First'"),
        ("{{1st}}", "bad_token_name", "'1st'"),
        ("{{first-name}}", "bad_token_name", "'first-name'"),
        ("{{first name}}", "bad_token_name", "'first name'"),
        ("{{{x}}}", "bad_token_name", "'{x'"),
        ("x" * (MAX_TEXT_CHARS + 1), "text_too_long", str(MAX_TEXT_CHARS)),
        (" ".join(f"{{{{t{i}}}}}" for i in range(MAX_TOKENS + 1)), "too_many_tokens", "21"),
    ],
)
def test_parse_tokens_errors_name_the_problem(text: str, problem: str, mentions: str) -> None:
    with pytest.raises(TemplateError) as caught:
        parse_tokens(text)
    assert caught.value.problem == problem
    assert mentions in str(caught.value)
    assert caught.value.field == "text"


def test_template_error_is_a_value_error_and_invalid_input() -> None:
    with pytest.raises(ValueError, match="never closed") as caught:
        template("{{x")
    assert isinstance(caught.value, InvalidInput)
    assert caught.value.extra == {"problem": "unbalanced_braces"}


def test_limits_are_inclusive() -> None:
    assert len(parse_tokens(" ".join(f"{{{{t{i}}}}}" for i in range(MAX_TOKENS)))) == MAX_TOKENS
    assert parse_tokens("{{x}}" * 400) == ["x"]  # repeats are one token
    assert parse_tokens("y" * MAX_TEXT_CHARS) == []


@given(
    st.lists(
        st.one_of(
            st.text(alphabet="abc {}.,\n", max_size=8).filter(
                lambda s: "{{" not in s and "}}" not in s and not s.endswith("{")
            ),
            names.map(lambda n: ("tok", n)),
        ),
        max_size=12,
    )
)
def test_parse_tokens_finds_what_was_written(parts: list[str | tuple[str, str]]) -> None:
    text, names = "", []
    for part in parts:
        if isinstance(part, tuple):
            text += "{{ " + part[1] + " }}"
            names.append(part[1])
        elif not (text.endswith("}") and part.startswith("}")):  # would form a stray '}}'
            text += part
    expected = list(dict.fromkeys(names))
    if len(expected) > MAX_TOKENS:
        with pytest.raises(TemplateError):
            parse_tokens(text)
    else:
        assert parse_tokens(text) == expected


# --- templates with rich cards ----------------------------------------------------------------

CARD: dict[str, Any] = {
    "title": "Order {{order_id}} shipped",
    "description": "Hello {{ first_name }}, it arrives {{eta}}.",
    "media": {"height": "MEDIUM", "file_url": "https://cdn.example.test/box.png"},
    "suggestions": [{"reply": {"text": "Track", "postback": "track"}}],
    "pinned": True,
    "weight": 1.5,
    "extra": None,
}


def test_template_tokens_cover_text_and_card() -> None:
    tpl = template("Hi {{first_name}}, order {{order_id}}", rich_card=CARD)
    assert tpl.tokens == ("first_name", "order_id", "eta")


@pytest.mark.parametrize(
    ("card", "problem", "field"),
    [
        ({"title": "{{Bad}}"}, "bad_token_name", "rich_card.title"),
        ({"s": [{"text": "{{x"}]}, "unbalanced_braces", "rich_card.s[0].text"),
        ({"description": "d" * (MAX_TEXT_CHARS + 1)}, "text_too_long", "rich_card.description"),
        ({"title": {1: "x"}}, "bad_rich_card", "rich_card.title"),
        ({"title": object()}, "bad_rich_card", "rich_card.title"),
        (
            {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": "deep"}}}}}}}}},
            "bad_rich_card",
            None,
        ),
    ],
)
def test_rich_card_errors(card: dict[str, Any], problem: str, field: str | None) -> None:
    with pytest.raises(TemplateError) as caught:
        template("text", rich_card=card)
    assert caught.value.problem == problem
    if field is not None:
        assert caught.value.field == field


def test_token_limit_counts_text_and_card_together() -> None:
    text = " ".join(f"{{{{t{i}}}}}" for i in range(MAX_TOKENS))
    template(text, rich_card={"title": "{{t0}}"})  # a repeat is fine
    with pytest.raises(TemplateError) as caught:
        template(text, rich_card={"title": "{{one_more}}"})
    assert caught.value.problem == "too_many_tokens"


def test_non_string_text_is_rejected() -> None:
    with pytest.raises(TemplateError) as caught:
        template(42)  # type: ignore[arg-type]
    assert caught.value.problem == "not_a_string"


# --- render -----------------------------------------------------------------------------------


def test_render_fills_text_and_card() -> None:
    tpl = template("Hi {{first_name}}, order {{ order_id }} is on its way.", rich_card=CARD)
    out = render(tpl, {"first_name": "Ada", "order_id": "A-17", "eta": "Friday", "unused": "x"})
    assert out["text"] == "Hi Ada, order A-17 is on its way."
    assert out["rich_card"] == {
        **CARD,
        "title": "Order A-17 shipped",
        "description": "Hello Ada, it arrives Friday.",
    }
    assert CARD["title"] == "Order {{order_id}} shipped"  # the template is not mutated


def test_render_without_card() -> None:
    assert render(template("Hello"), {}) == {"text": "Hello", "rich_card": None}


def test_render_names_the_missing_variable() -> None:
    tpl = template("Hi {{first_name}} {{last_name}}")
    with pytest.raises(TemplateError, match="'last_name' is missing") as caught:
        render(tpl, {"first_name": "Ada"})
    assert caught.value.problem == "missing_variable"
    assert caught.value.field == "variables.last_name"
    with pytest.raises(TemplateError, match="'first_name', 'last_name' are missing"):
        render(tpl, {})


def test_render_rejects_non_string_values_without_echoing_them() -> None:
    with pytest.raises(TemplateError) as caught:
        render(template("{{n}}"), {"n": 447700900123})
    assert caught.value.problem == "bad_variable"
    assert "447700900123" not in str(caught.value)


def test_values_are_not_expanded_again() -> None:
    out = render(template("{{a}} / {{b}}"), {"a": "{{b}}", "b": "B"})
    assert out["text"] == "{{b}} / B"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Ada\nLovelace", "Ada Lovelace"),
        ("a\r\nb\tc", "a  b c"),
        ("bell\x07 and nul\x00 and del\x7f", "bell and nul and del"),
        ("evil\u202eedoc", "eviledoc"),
        ("line\u2028sep", "line sep"),
        ("Zoë 👩‍💻", "Zoë 👩‍💻"),  # zero-width joiner in emoji sequences is kept
    ],
)
def test_clean_value(value: str, expected: str) -> None:
    assert clean_value(value) == expected
    assert render(template("{{v}}"), {"v": value})["text"] == expected


# --- redact -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "body"),
    [
        ("Hi {{first_name}}, your order {{order_id}} shipped.", "Hi, your order shipped."),
        ("{{greeting}} Your parcel is ready!", "Your parcel is ready!"),
        ("Ready for {{ name }}!", "Ready for!"),
        ("Line one {{a}}\n{{b}} line two", "Line one\nline two"),
        ("Spaces  kept   collapsed", "Spaces kept collapsed"),
    ],
)
def test_redact_removes_tokens(text: str, body: str) -> None:
    assert redact(template(text), LINK) == f"{body}\n{LINK}"


def test_redact_of_only_tokens_uses_neutral_text() -> None:
    assert redact(template("{{a}} {{b}}"), LINK) == f"{REDACTED_FALLBACK_TEXT} {LINK}"


def test_sensitive_template_never_shows_its_text() -> None:
    tpl = template("Your test result for {{test}} is ready", sensitive=True, rich_card=CARD)
    out = redact(tpl, LINK)
    assert out == secure_link_text(LINK) == f"{SECURE_LINK_TEXT} {LINK}"
    assert "result" not in out


def test_rich_card_is_not_part_of_a_fallback() -> None:
    out = redact(template("Update", rich_card={"title": "CARD-ONLY {{x}}"}), LINK)
    assert "CARD-ONLY" not in out
    assert out == f"Update\n{LINK}"


@pytest.mark.parametrize(
    "link",
    [
        "http://m.example.test/s/1",
        "https://",
        "https://m.example.test/a b",
        "ftp://x",
        "https://x\n",
    ],
)
def test_redact_wants_an_https_link(link: str) -> None:
    with pytest.raises(TemplateError) as caught:
        redact(template("Hi"), link)
    assert caught.value.problem == "bad_link"
    assert caught.value.field == "secure_link"


# Literal template text is drawn from ASCII, values from scripts the template, the link and the
# neutral sentences never use, so "the value is in the output" can only mean it leaked.
literal = st.text(alphabet="abcdefghij ,.!?\n", max_size=12)
values = st.text(
    alphabet=st.characters(
        categories=("Lu", "Ll", "Nd", "Lo", "So", "Zs", "Cc"),
        exclude_characters="\t\n\r\x0b\x0c\x1c\x1d\x1e\x85 ",
        min_codepoint=0x80,
    ),
    min_size=1,
    max_size=16,
).filter(lambda s: clean_value(s).strip() != "")


@settings(max_examples=200, deadline=None)
@given(
    parts=st.lists(st.one_of(literal, names.map(lambda n: ("tok", n))), max_size=10),
    card_title=st.one_of(st.none(), names),
    sensitive=st.booleans(),
    data=st.data(),
)
def test_fallback_never_contains_a_variable_value(
    parts: list[str | tuple[str, str]], card_title: str | None, sensitive: bool, data: st.DataObject
) -> None:
    text = "".join("{{" + p[1] + "}}" if isinstance(p, tuple) else p for p in parts)
    card = None if card_title is None else {"title": "{{" + card_title + "}}"}
    tpl = template(text, rich_card=card, sensitive=sensitive)
    variables = {name: data.draw(values, label=name) for name in tpl.tokens}

    rendered = render(tpl, variables)
    redacted = redact(tpl, LINK)

    for value in variables.values():
        shown = clean_value(value)
        filled = [rendered["text"], *([] if card is None else [rendered["rich_card"]["title"]])]
        assert any(shown in part for part in filled)
        assert value not in redacted
        assert shown.strip() not in redacted
    assert "{{" not in redacted and "}}" not in redacted
    assert redacted.endswith(LINK)
    if sensitive:
        assert redacted == secure_link_text(LINK)
