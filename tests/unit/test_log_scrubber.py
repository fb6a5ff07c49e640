"""The log scrubber: phone- and e-mail-shaped text is redacted wherever it hides in a record;
timestamps, UUIDs, digests and numbers are left alone; JSON lines parse."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator

import pytest

from consentgate.observability.logs import (
    REDACTED,
    JsonFormatter,
    RequestIdFilter,
    ScrubFilter,
    TextFormatter,
    configure_logging,
    request_id,
    scrub,
)

# (text, what it must become): each phone number or address in every shape people type.
REDACT = [
    ("+447911123456", REDACTED),
    ("07911 123456", REDACTED),
    ("+44 7400 123456", REDACTED),
    ("+44 (0) 7911 123456", REDACTED),
    ("(0)7911-222333", REDACTED),
    ("+1 650 253 0000", REDACTED),
    ("(650) 253-0000", REDACTED),
    ("650-253-0000", REDACTED),
    ("06 12 34 56 78", REDACTED),
    ("0044 7911 123456", REDACTED),
    ("4479111 00001", REDACTED),
    ("1234567", REDACTED),  # a bare national number looks exactly like this
    ("\uff0b447911123456", REDACTED),  # full-width plus
    ("٠٧٩١١١٢٣٤٥٦", REDACTED),  # Arabic-Indic digits, which phonenumbers accepts
    ("to +447911123456.", f"to {REDACTED}."),
    ("tel:+447911123456", f"tel:{REDACTED}"),
    ("to=07911123456,", f"to={REDACTED},"),
    ("[07911123456]", f"[{REDACTED}]"),
    ("/rbm/v1/phones/+447911123456/agentMessages", f"/rbm/v1/phones/{REDACTED}/agentMessages"),
    ("/phones/%2B447911123456/capability", f"/phones/{REDACTED}/capability"),
    ("Alice.Smith@Example.COM", REDACTED),
    ("bob+rcs@example.org", REDACTED),
    ("mailto:bob@example.org>", f"mailto:{REDACTED}>"),
    ("alice%40example.com", REDACTED),
    ("jürgen@bücher.de", REDACTED),
    (
        "sent to +44 7911 123456 and alice@example.com at 2026-11-01T10:00:00Z",
        f"sent to {REDACTED} and {REDACTED} at 2026-11-01T10:00:00Z",
    ),
]

# Text that must come through unchanged.
KEEP = [
    "2026-11-01T10:00:00.123456Z",
    "2026-11-01T10:00:00+01:00",
    "2026-11-01 10:00:00,123",
    "10:00:00",
    str(uuid.UUID("550e8400-e29b-41d4-a716-446655440000")),
    "12345678-1234-5678-9abc-def012345678",
    "00000000-0000-0000-0000-000000000000",
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "1234567890abcdef1234567890abcdef",
    "Zk9x1234567abcDEF_-xQ",  # a base64url hashed id with a digit run inside
    "hashed_id=aB_1234567_cD",
    "duration_ms=1234567.891",
    "took 12.5 ms",
    "seq 42 of 123456",
    "1767225600000000",  # an instant in microseconds: 16 digits is no phone
    "127.0.0.1:8080",
    "10.123.45.67",
    "v1.2.3",
    "postgresql+psycopg://cg@localhost/consentgate",
    "/v1/subjects/{hashed_id}/consents",
    "POST /v1/consent-events 201",
    "[redacted] stays [redacted]",
]


@pytest.mark.parametrize(("text", "expected"), REDACT)
def test_redacts_phone_and_email_shapes(text: str, expected: str) -> None:
    assert scrub(text) == expected
    assert scrub(expected) == expected  # idempotent


@pytest.mark.parametrize("text", KEEP)
def test_leaves_timestamps_ids_and_numbers_alone(text: str) -> None:
    assert scrub(text) == text


def _record(msg: str, args: object = None, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("consentgate.test", logging.INFO, __file__, 1, msg, None, None)
    record.args = args  # type: ignore[assignment]
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_filter_scrubs_message_args_and_extra_fields() -> None:
    record = _record(
        "send to %s failed after %d tries (%r)",
        ("+447911123456", 3, {"email": "a@example.com"}),
        to="07911 123456",
        nested={"list": ["x", "bob@example.org"], "n": 12345678},
        count=12345678,
        ok=True,
        other=ValueError("bad number +447911123456"),
    )
    assert ScrubFilter().filter(record)
    assert record.getMessage() == (
        f"send to {REDACTED} failed after 3 tries ({{'email': '{REDACTED}'}})"
    )
    assert record.args is None
    assert record.to == REDACTED
    assert record.nested == {"list": ["x", REDACTED], "n": 12345678}
    assert record.count == 12345678  # numbers in fields stay numbers
    assert record.ok is True
    assert record.other == f"bad number {REDACTED}"


def test_filter_scrubs_exception_text_and_stack() -> None:
    try:
        raise RuntimeError("GET https://carrier/phones/+447911123456 failed for a@example.com")
    except RuntimeError:
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "boom", None, __import__("sys").exc_info()
        )
    record.stack_info = "Stack:\n  called with 07911 123456"
    ScrubFilter().filter(record)
    line = JsonFormatter().format(record)
    assert "7911" not in line and "example.com" not in line
    entry = json.loads(line)
    assert "RuntimeError" in entry["exception"] and REDACTED in entry["exception"]
    assert entry["stack"].endswith(f"called with {REDACTED}")


def test_bad_format_string_is_kept_and_scrubbed() -> None:
    record = _record("to %s and %s", ("+447911123456",))
    ScrubFilter().filter(record)
    assert "7911" not in record.getMessage() and "to %s and %s" in record.getMessage()


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    # Earlier tests in the same process (an in-process uvicorn, dictConfig) may have left
    # uvicorn's logger disabled or levelled: start from a clean one and restore it after.
    uvicorn_error = logging.getLogger("uvicorn.error")
    saved_uvicorn = (uvicorn_error.disabled, uvicorn_error.level)
    uvicorn_error.disabled, uvicorn_error.level = False, logging.NOTSET
    handler = configure_logging("json", "DEBUG")
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    try:
        yield stream
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        uvicorn_error.disabled, uvicorn_error.level = saved_uvicorn
        logging.captureWarnings(False)


def test_json_lines_parse_and_carry_request_id_and_extras(captured: io.StringIO) -> None:
    log = logging.getLogger("consentgate.test")
    token = request_id.set("req-1234abcd")
    try:
        log.info("GET %s %d", "/v1/messages/{message_id}", 200, extra={"duration_ms": 1.5})
        log.warning("lookup for +44 7911 123456\nsecond line")
    finally:
        request_id.reset(token)
    log.error("outside a request", extra={"route": "<unmatched>"})
    lines = captured.getvalue().splitlines()
    assert len(lines) == 3
    entries = [json.loads(line) for line in lines]
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= set(entry)
        assert entry["time"].endswith("Z") and entry["logger"] == "consentgate.test"
    assert entries[0]["message"] == "GET /v1/messages/{message_id} 200"
    assert entries[0]["duration_ms"] == 1.5 and entries[0]["request_id"] == "req-1234abcd"
    assert entries[1]["message"] == f"lookup for {REDACTED}\nsecond line"
    assert entries[1]["level"] == "warning"
    assert "request_id" not in entries[2] and entries[2]["route"] == "<unmatched>"


def test_uvicorn_and_warnings_go_through_the_same_handler(captured: io.StringIO) -> None:
    logging.getLogger("uvicorn.error").info("Started server process [%d]", 4242)
    logging.getLogger("uvicorn.error").error("bad request from +447911123456")
    import warnings

    warnings.warn("a warning mentioning bob@example.org", UserWarning, stacklevel=1)
    entries = [json.loads(line) for line in captured.getvalue().splitlines()]
    assert [e["logger"] for e in entries] == ["uvicorn.error", "uvicorn.error", "py.warnings"]
    assert entries[0]["message"] == "Started server process [4242]"
    assert "7911" not in entries[1]["message"] and "example.org" not in entries[2]["message"]


def test_text_format_appends_fields() -> None:
    record = _record("GET %s", ("/healthz",), status=200)
    RequestIdFilter().filter(record)
    ScrubFilter().filter(record)
    line = TextFormatter().format(record)
    assert line.endswith("INFO consentgate.test GET /healthz status=200")
