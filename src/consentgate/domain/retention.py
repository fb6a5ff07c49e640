"""Retention policy: how long operational records are kept, as plain data and pure rules.

Three horizons, in whole days, per tenant:

* ``delivery_events_days`` (default 400): delivery receipts and reads of a send
  (``message_events``). Thirteen months and a bit: a year-on-year comparison still works.
* ``send_decisions_days`` (default 400): the send decisions themselves (``messages``, with their
  events) and finished or abandoned campaigns with their recipient rows.
* ``outbox_days`` (default 30): outbox events that were delivered or given up (dead), their
  delivery attempts, and the cached answers to CMP webhooks (a CMP retries a delivery for up to
  a few days; a month leaves room to investigate an outage and replay).

A delivery event cannot outlive the send it belongs to (deleting a send deletes its events),
so ``delivery_events_days`` may not exceed ``send_decisions_days``. The ledger has no horizon:
its leaves, nodes and checkpoints are never deleted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from consentgate.domain.timeutil import to_micros
from consentgate.errors import InvalidInput

MIN_DAYS = 1
MAX_DAYS = 3650


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    delivery_events_days: int = 400
    send_decisions_days: int = 400
    outbox_days: int = 30

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


DEFAULT_POLICY = RetentionPolicy()
FIELDS = tuple(DEFAULT_POLICY.as_dict())


def policy_from(values: Mapping[str, Any]) -> RetentionPolicy:
    """A validated policy from ``values``; a field left out takes its default (a PUT replaces
    the whole policy). Raises InvalidInput naming the offending field."""
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise InvalidInput(f"unknown retention setting {unknown[0]!r}", field=unknown[0])
    chosen: dict[str, int] = {}
    for name in FIELDS:
        value = values.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput(f"{name} must be a whole number of days", field=name)
        if not MIN_DAYS <= value <= MAX_DAYS:
            raise InvalidInput(f"{name} must be between {MIN_DAYS} and {MAX_DAYS} days", field=name)
        chosen[name] = value
    policy = RetentionPolicy(**chosen)
    if policy.delivery_events_days > policy.send_decisions_days:
        raise InvalidInput(
            "delivery_events_days cannot exceed send_decisions_days: a send's delivery events "
            "are deleted with it",
            field="delivery_events_days",
        )
    return policy


@dataclass(frozen=True, slots=True)
class Cutoffs:
    """Instants (µs since the epoch): a record strictly older than its cutoff has expired."""

    delivery_events_us: int
    send_decisions_us: int
    outbox_us: int


def cutoffs(policy: RetentionPolicy, now: datetime) -> Cutoffs:
    def before(days: int) -> int:
        return to_micros(now - timedelta(days=days))

    return Cutoffs(
        before(policy.delivery_events_days),
        before(policy.send_decisions_days),
        before(policy.outbox_days),
    )
