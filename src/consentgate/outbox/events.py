"""The outbox's event catalogue and payload shapes (pure: no I/O).

Every outward event is one JSON document, ``{"type", "timestamp", "data"}`` (the Standard
Webhooks payload shape), rendered once when the change is recorded and stored as the exact
bytes every endpoint receives, so a retry or a replay re-sends the same bytes under the same
``webhook-id``. People appear only as the keyed ``hashed_id`` (and, outside the payload, as
the random ``subject_ref`` that orders a subject's events): never a phone number or e-mail.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

CONSENT_CHANGED = "consent.changed"
MESSAGE_DECIDED = "message.decided"
#: Erasure notice (GDPR Art. 17(2)/19): recipients erase their own copies of the subject.
SUBJECT_ERASED = "subject.erased"
#: Provider receipts, by ``message_events.kind``.
RECEIPT_TYPES = {
    "delivered": "message.delivered",
    "read": "message.read",
    "failed": "message.failed",
}
#: The closed list of event types an endpoint may subscribe to.
EVENT_TYPES: tuple[str, ...] = (
    CONSENT_CHANGED,
    MESSAGE_DECIDED,
    *RECEIPT_TYPES.values(),
    SUBJECT_ERASED,
)

#: Consent events with this source originate in consentgate (STOP keywords, RBM unsubscribe):
#: the CMP must hear of them. Every other source is the CMP's (or the business's) own event,
#: which a ``cmp`` endpoint is not sent back.
LOCAL_SOURCE = "inbound_keyword"


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """One outward event. ``order_key`` orders it among the subject's other events (the
    random subject_ref); ``to_cmp``: whether ``cmp`` endpoints receive it too."""

    event_type: str
    order_key: str
    data: dict[str, Any]
    to_cmp: bool


def order_key(subject_ref: str | None, hashed_id: str) -> str:
    """The subject's random ref; for a message to a number that is no subject, ``h:`` and the
    keyed hash (what :func:`consentgate.outbox.store.erase_subject` also matches)."""
    return subject_ref if subject_ref is not None else f"h:{hashed_id}"


def consent_changed(
    *,
    subject_ref: str,
    hashed_id: str,
    consent_type: str,
    status: str,
    timestamp: str,
    cmp_version: str | None,
    consent_id: str,
    ledger_seq: int,
    source: str,
    state_changed: bool,
) -> OutboxEvent:
    """A consent event newly recorded in the ledger. ``state_changed``: it became the
    subject's state for the purpose (False for a late-arriving older event, kept in the
    ledger only)."""
    return OutboxEvent(
        CONSENT_CHANGED,
        subject_ref,
        {
            "hashed_id": hashed_id,
            "consent_type": consent_type,
            "status": status,
            "timestamp": timestamp,
            "cmp_version": cmp_version,
            "consent_id": consent_id,
            "ledger_seq": ledger_seq,
            "source": source,
            "state_changed": state_changed,
        },
        to_cmp=source == LOCAL_SOURCE,
    )


def message_decided(
    *,
    message_id: str | None,
    subject_ref: str | None,
    hashed_id: str,
    consent_type: str,
    action: str,
    mode: str | None,
    reason: str | None,
    consent_seq: int | None,
    campaign_id: str | None,
) -> OutboxEvent:
    """A send decision: sent, fallback or skipped, with its mode, reason code and the ledger
    seq of the consent leaf that allowed it. ``message_id`` is None only for a campaign
    recipient that could not be sent as stored (reason ``ambiguous``)."""
    return OutboxEvent(
        MESSAGE_DECIDED,
        order_key(subject_ref, hashed_id),
        {
            "message_id": message_id,
            "hashed_id": hashed_id,
            "consent_type": consent_type,
            "action": action,
            "mode": mode,
            "reason": reason,
            "consent_seq": consent_seq,
            "campaign_id": campaign_id,
        },
        to_cmp=True,
    )


def message_receipt(
    kind: str,
    *,
    message_id: str,
    subject_ref: str,
    consent_type: str,
    campaign_id: str | None,
    provider: str,
    at: str,
) -> OutboxEvent:
    """A provider receipt (``delivered``, ``read``, ``failed``) for a message; join it to
    ``message.decided`` by ``message_id``."""
    return OutboxEvent(
        RECEIPT_TYPES[kind],
        subject_ref,
        {
            "message_id": message_id,
            "consent_type": consent_type,
            "campaign_id": campaign_id,
            "provider": provider,
            "status": kind,
            "at": at,
        },
        to_cmp=True,
    )


def subject_erased(hashed_ids: list[str], order_key: str) -> OutboxEvent:
    """An erasure notice: the subject's hashed ids (every salt version), so each recipient
    erases its copies. Nothing else: a subject_ref, ledger seq or consent id would tie the
    notice to the erasure leaf, and ``order_key`` must be a fresh random value for the same
    reason. Sent to ``cmp`` endpoints too (the CMP holds the subject as well)."""
    return OutboxEvent(SUBJECT_ERASED, order_key, {"hashed_ids": list(hashed_ids)}, to_cmp=True)


def purged(event_type: str, created_at: str) -> str:
    """What replaces an erasure notice's body once every delivery of it is finished
    (delivered or dead): the hashed ids must not outlive the notice."""
    return json.dumps(
        {"type": event_type, "timestamp": created_at, "data": {"purged": True}},
        separators=(",", ":"),
    )


def is_purged(body: str) -> bool:
    try:
        data = json.loads(body).get("data")
    except (ValueError, AttributeError):
        return False
    return isinstance(data, dict) and data.get("purged") is True


def render(event: OutboxEvent, created_at: str) -> str:
    """The body every endpoint receives (compact JSON, keys in a fixed order)."""
    return json.dumps(
        {"type": event.event_type, "timestamp": created_at, "data": event.data},
        separators=(",", ":"),
    )
