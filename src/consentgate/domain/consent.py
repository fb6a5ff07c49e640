"""The consent rules of DESIGN §3, as pure functions over plain data.

* The state of (tenant, subject, purpose) is the event with the latest ``timestamp`` (when the
  person acted), not the latest arrival.
* Equal timestamps with different statuses: ``withdrawn`` wins.
* Remaining ties (same instant, same status) go to the greater ``consent_id``, so the winner
  depends only on the set of events, never on their arrival order.
* A late-arriving older event is kept in the ledger but leaves the state alone.
* A purpose may have a maximum age after which a grant reads as ``expired``.
* An erasure leaf (status ``erased``, purpose ``*``) removes the subject's state for every
  purpose, in ledger order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from consentgate.errors import InvalidInput


class ConsentStatus(StrEnum):
    GRANTED = "granted"
    WITHDRAWN = "withdrawn"


class EffectiveStatus(StrEnum):
    GRANTED = "granted"
    WITHDRAWN = "withdrawn"
    EXPIRED = "expired"


class Source(StrEnum):
    WEB = "web"
    ANDROID = "android"
    IOS = "ios"
    API = "api"
    IMPORT = "import"
    INBOUND_KEYWORD = "inbound_keyword"


@dataclass(frozen=True, slots=True)
class Purpose:
    name: str
    max_age: timedelta | None = None
    description: str = ""


DEFAULT_PURPOSES: tuple[Purpose, ...] = (
    Purpose("marketing_rcs", timedelta(days=730), "Promotional RCS messages"),
    Purpose("transactional_rcs", None, "Service messages the person asked for"),
    Purpose("analytics", timedelta(days=395), "Engagement measurement"),
    Purpose("personalization", timedelta(days=395), "Tailoring message content"),
)


@dataclass(frozen=True, slots=True)
class Precedence:
    """What decides between two events for the same subject and purpose."""

    timestamp: datetime
    status: ConsentStatus
    consent_id: str

    def key(self) -> tuple[datetime, int, str]:
        return (self.timestamp, 1 if self.status is ConsentStatus.WITHDRAWN else 0, self.consent_id)

    def supersedes(self, current: Precedence | None) -> bool:
        return current is None or self.key() > current.key()


@dataclass(frozen=True, slots=True)
class StateEntry:
    """The recorded latest state of one (subject, purpose)."""

    status: ConsentStatus
    effective_at: datetime
    event_seq: int
    consent_id: str

    @property
    def precedence(self) -> Precedence:
        return Precedence(self.effective_at, self.status, self.consent_id)


@dataclass(frozen=True, slots=True)
class StateView:
    """What a reader sees: expiry applied at ``now``."""

    status: EffectiveStatus
    effective_at: datetime
    event_seq: int
    expires_at: datetime | None


def expires_at(entry: StateEntry, max_age: timedelta | None) -> datetime | None:
    if entry.status is not ConsentStatus.GRANTED or max_age is None:
        return None
    return entry.effective_at + max_age


def view(entry: StateEntry, max_age: timedelta | None, now: datetime) -> StateView:
    expiry = expires_at(entry, max_age)
    status = EffectiveStatus(entry.status.value)
    if expiry is not None and now >= expiry:
        status = EffectiveStatus.EXPIRED
    return StateView(status, entry.effective_at, entry.event_seq, expiry)


def apply(current: StateEntry | None, candidate: StateEntry) -> StateEntry | None:
    """The new state after ``candidate`` arrives, or None when the state does not change."""
    if candidate.precedence.supersedes(None if current is None else current.precedence):
        return candidate
    return None


def fold(events: Iterable[tuple[str, str, StateEntry]]) -> dict[tuple[str, str], StateEntry]:
    """Replay ``(subject_ref, purpose, entry)`` triples in any order into the latest state."""
    state: dict[tuple[str, str], StateEntry] = {}
    for subject_ref, purpose, entry in events:
        key = (subject_ref, purpose)
        winner = apply(state.get(key), entry)
        if winner is not None:
            state[key] = winner
    return state


# Erasure (DESIGN §3): a leaf with this status and purpose ends a subject. It is not a
# consent status (ingest never accepts it); replay applies it in ledger order, whatever the
# timestamps, and the subject's ref is never linked to anyone again.
ERASED = "erased"
ALL_PURPOSES = "*"


def is_erasure(status: str, purpose: str) -> bool:
    return status == ERASED and purpose == ALL_PURPOSES


def forget(
    state: dict[tuple[str, str], StateEntry], subject_ref: str, purposes: Iterable[str]
) -> list[tuple[str, str]]:
    """Apply an erasure to a replayed ``state``: drop the subject's entry for each of
    ``purposes`` (every purpose seen so far). Returns the keys removed."""
    removed = []
    for purpose in purposes:
        if state.pop((subject_ref, purpose), None) is not None:
            removed.append((subject_ref, purpose))
    return removed


def check_not_future(
    timestamp: datetime, now: datetime, skew: timedelta, *, field: str = "timestamp"
) -> None:
    if timestamp - now > skew:
        raise InvalidInput(
            f"{field} is more than {int(skew.total_seconds())} s in the future", field=field
        )
