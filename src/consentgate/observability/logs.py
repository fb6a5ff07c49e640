"""Structured logs: one JSON object per line, with a scrubber that keeps phone numbers and
e-mail addresses out of every line whatever the code that logged it passed in.

DESIGN §3 forbids raw identifiers in logs. Code here never logs one on purpose, but a log line
can still carry one by accident: an exception message quoting a URL, a provider's error body,
a library's debug line. So the last line of defence is a :class:`ScrubFilter` on every handler
(handler filters see records propagated from every logger, unlike logger filters): it renders
the message with its arguments, replaces whatever is shaped like a phone number or an e-mail
address with ``[redacted]``, does the same for string extra fields and the formatted
exception, and only then lets the record through to the formatter.

What "shaped like a phone number" means (:data:`PHONE`): 7 to 15 digits, optionally after
``+`` / ``%2B`` / ``00`` / ``(``, with single spaces, hyphens or parentheses between them — the
E.164 and national formats people type. It is built not to touch what logs are full of:
ISO dates (``2026-11-01``), times (``10:00:00``), UUIDs and hex digests (digit runs glued to
hex letters or hyphens), decimals (``1234567.8``) and IP addresses. A bare run of 7-15 digits
in a message is redacted (it is exactly what a national number looks like), so counts belong
in numeric extra fields, which are kept as numbers.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any, Literal

REDACTED = "[redacted]"

# Separators allowed between the digits of a phone number: at most three of space, hyphen
# and parentheses in a row (``+44 (0) 7911-123456``). Not dots or colons: those are decimals,
# times and addresses.
_SEP = r"[ \-()\u00a0]{0,3}"
_DIGITS = rf"\d(?:{_SEP}\d){{6,14}}"
# Not followed by more of a token (a letter, digit, underscore or hyphen: a hex digest, a
# base64url hashed id or a UUID goes on) or by a decimal/time continuation (``.5``, ``:30``).
_END = r"(?![0-9A-Za-z_\-]|[.:]\d)"
PHONE = re.compile(
    # With a leading plus (also percent-encoded or full-width), anywhere.
    rf"(?:\+|%2[Bb]|\uff0b)\(?{_DIGITS}{_END}"
    # Without one: a token of its own, not the tail of a hex string, UUID or decimal, and
    # not an ISO date.
    rf"|(?<![0-9A-Za-z_.\-+])\(?(?!\d{{4}}-\d{{2}}-\d{{2}}){_DIGITS}{_END}"
)
# The local part starts only where a run of its characters starts and is taken possessively,
# so a long text is read once, not once per character (no "%": a percent-encoded "@" ends it).
_LOCAL = r"[\w.!#$&*+?^`{|}~-]"
EMAIL = re.compile(
    rf"(?<!{_LOCAL}){_LOCAL}++(?:@|%40)[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{{2,}}(?![\w-])",
    re.IGNORECASE,
)
# Cheap tests that decide whether the full patterns need to run at all. EMAIL in particular
# backtracks through every word of a text that holds no "@" (quadratic in a token's length).
_AT = re.compile(r"@|%40", re.IGNORECASE)
_SEVEN_DIGITS = re.compile(rf"\d(?:{_SEP}\d){{6}}")  # PHONE's core, without its lookarounds


def scrub(text: str) -> str:
    """``text`` with every phone-shaped and e-mail-shaped run replaced by ``[redacted]``."""
    if _AT.search(text) is not None:
        text = EMAIL.sub(REDACTED, text)
    if _SEVEN_DIGITS.search(text) is not None:
        text = PHONE.sub(REDACTED, text)
    return text


def scrub_value(value: Any) -> Any:
    """Scrub strings, recursively through dicts, lists and tuples; keep numbers, booleans and
    None as they are; anything else becomes its scrubbed ``str``."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {str(k): scrub_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_value(v) for v in value]
    return scrub(str(value))


#: Attributes every LogRecord has; anything else on a record came in through ``extra=``
#: (uvicorn's ``color_message``, the message again with terminal colours, is dropped too).
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}

_exc_formatter = logging.Formatter()


class ScrubFilter(logging.Filter):
    """Rewrites a record in place so nothing phone- or e-mail-shaped reaches a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a bad format string: keep both parts, scrubbed
            message = f"{record.msg} {record.args}"
        record.msg = scrub(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = _exc_formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        for name, value in list(vars(record).items()):
            if name not in _STANDARD:
                setattr(record, name, scrub_value(value))
        return True


#: The id of the HTTP request being served (set by the access middleware), so every line
#: logged while serving it says which request it belongs to.
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "consentgate_request_id", default=None
)


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        current = request_id.get()
        if current is not None and not hasattr(record, "request_id"):
            record.request_id = current
        return True


_second: tuple[int, str] = (-1, "")


def _rfc3339(created: float) -> str:
    """``2026-11-01T10:00:00.123Z``: UTC, milliseconds (the seconds part formatted once per
    second: strftime is a good part of a line's cost)."""
    global _second
    whole = int(created)
    if _second[0] != whole:
        _second = (whole, datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{_second[1]}.{int((created - whole) * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", ...extra fields, "exception"?}``, one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD and name not in entry:
                entry[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """Human-readable, with the extra fields appended as ``key=value``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = " ".join(
            f"{k}={v}" for k, v in vars(record).items() if k not in _STANDARD and k != "exc_text"
        )
        if not extra:
            return line
        head, sep, tail = line.partition("\n")  # keep a traceback below the fields
        return f"{head} {extra}{sep}{tail}"


LogFormat = Literal["json", "text"]

#: The handler :func:`configure_logging` installed, when its format is JSON: the access log
#: writes its lines to it directly (:func:`write_access`).
_access_handler: logging.StreamHandler[Any] | None = None


def write_access(method: str, route: str, status: int, duration_ms: float, rid: str) -> bool:
    """Write one access-log line straight to the JSON handler, the same line a record through
    :class:`JsonFormatter` would give. A LogRecord with its two filters and the formatter
    cost ~100 µs of CPU per request, a third of a consent lookup's. Every value here is
    trusted — a route *template*, a method from HTTP's closed set, a status, a duration and a
    request id the caller checked — so the scrubber has nothing to do. False when logging
    was configured some other way (text format, a test's capture): the caller then logs a
    record as usual."""
    handler = _access_handler
    if handler is None:
        return False
    line = json.dumps(
        {
            "time": _rfc3339(time.time()),
            "level": "info",
            "logger": "consentgate.access",
            "message": f"{method} {route} {status}",
            "method": method,
            "route": route,
            "status": status,
            "duration_ms": duration_ms,
            "request_id": rid,
        },
        ensure_ascii=False,
    )
    handler.acquire()
    try:
        handler.stream.write(line + "\n")
        handler.flush()
    finally:
        handler.release()
    return True


def configure_logging(fmt: LogFormat = "json", level: str | int = "INFO") -> logging.Handler:
    """Replace the root logger's handlers by one stderr handler in ``fmt``, with the request
    id and scrub filters; route ``warnings`` and uvicorn's loggers through it. Idempotent."""
    global _access_handler
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    _access_handler = handler if fmt == "json" else None
    handler.addFilter(RequestIdFilter())
    handler.addFilter(ScrubFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True
    logging.captureWarnings(True)
    return handler


def scrub_all_handlers() -> None:
    """Put a :class:`ScrubFilter` on every handler already installed anywhere (for code that
    configured logging its own way)."""
    loggers = [logging.getLogger()] + [
        logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
    ]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if not any(isinstance(f, ScrubFilter) for f in handler.filters):
                handler.addFilter(ScrubFilter())


__all__ = [
    "EMAIL",
    "PHONE",
    "REDACTED",
    "JsonFormatter",
    "LogFormat",
    "RequestIdFilter",
    "ScrubFilter",
    "TextFormatter",
    "configure_logging",
    "request_id",
    "scrub",
    "scrub_all_handlers",
    "scrub_value",
    "write_access",
]
