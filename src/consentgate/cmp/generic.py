"""The ``generic`` adapter: a CMP's JSON event (or ``{"events": [...]}``) to consent events.

The payload is the one ``POST /v1/consent-events`` takes, with ``hashed_phone`` accepted as the
CMP's name for ``hashed_id`` and ``web`` as the default source (a CMP collects on the web
unless it says otherwise).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from consentgate.consent.ingest import EventInput
from consentgate.errors import InvalidInput


class _Device(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rcs: bool
    native_e2ee: bool = False
    app_key_kid: str | None = Field(None, max_length=200)


class GenericEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", str_max_length=1000)

    consent_id: str = Field(min_length=1, max_length=200)
    phone: str | None = None
    email: str | None = None
    hashed_phone: str | None = None
    hashed_id: str | None = None
    consent_type: str = Field(min_length=1, max_length=64)
    status: str
    timestamp: str
    cmp_version: str | None = Field(None, max_length=100)
    source: str = "web"
    policy_version: str | None = Field(None, max_length=100)
    jurisdiction: str | None = Field(None, max_length=16)
    device: _Device | None = None
    receipt: str | None = Field(None, max_length=16384)


class GenericBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[GenericEvent] = Field(min_length=1, max_length=1000)


def to_events(payload: Any) -> tuple[list[EventInput], bool]:
    """(events, is_batch); pydantic's ValidationError names the offending field."""
    batch = isinstance(payload, dict) and "events" in payload
    items = (
        GenericBatch.model_validate(payload).events
        if batch
        else [GenericEvent.model_validate(payload)]
    )
    events = []
    for item in items:
        data = item.model_dump()
        hashed = data.pop("hashed_phone")
        if hashed is not None:
            if data["hashed_id"] is not None:
                raise InvalidInput("give hashed_phone or hashed_id, not both", field="hashed_id")
            data["hashed_id"] = hashed
        events.append(EventInput(**data))
    return events, batch
