"""What one message (``POST /v1/messages``) and a campaign batch share once consent is known:
the idempotency rule for a key already taken, the outbound message for a decision (envelope,
teaser, secure link, which provider), and the write of decisions with their
``message.decided`` outbox events. Both paths call these, so the rules exist once; they
differ only in how many recipients they carry per statement and per HTTP connection.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum
from typing import Any

from sqlalchemy import Connection

from consentgate.crypto.envelope import seal
from consentgate.crypto.keystore import KeyStore
from consentgate.delivery import bulk
from consentgate.delivery.planner import CapabilityReport, DeliveryMode, SendDecision
from consentgate.delivery.providers.base import OutboundMessage, Provider
from consentgate.delivery.templates import Template, redact, render, secure_link_text
from consentgate.domain.reasons import ReasonCode
from consentgate.observability.metrics import Metrics
from consentgate.outbox import events as outbox_events
from consentgate.outbox.store import OutboxWriter

ENVELOPE_TTL = timedelta(days=7)
TEASER = "You have a new secure message."


def request_hash(
    hashed_current: str, consent_type: str, template_id: str, variables: dict[str, Any]
) -> bytes:
    """What an idempotency key is bound to: the same key with another request is a conflict."""
    return hashlib.sha256(
        json.dumps(
            [hashed_current, consent_type, template_id, variables], sort_keys=True, default=str
        ).encode()
    ).digest()


class Claim(Enum):
    """What to do with an idempotency key another request already holds."""

    TAKE_OVER = "take_over"  # send under the stored message id (the provider de-duplicates)
    ANSWER = "answer"  # give the stored answer, send nothing
    BUSY = "busy"  # another request is sending it right now
    MISMATCH = "mismatch"  # the key was used for another message


def existing_claim(
    row: Any, wanted_hash: bytes, now_us: int, stale_us: int, retry_unavailable: bool
) -> Claim:
    """The rule for a key already in ``messages``: a pending claim older than ``stale_us``
    belongs to a worker that died and is taken over; a send that failed only because the
    provider was unavailable is taken over when ``retry_unavailable``; a pending fresh claim
    is busy; anything else has its answer."""
    if bytes(row.request_hash) != wanted_hash:
        return Claim.MISMATCH
    stale = row.status == "pending" and row.updated_us < now_us - stale_us
    retry = (
        retry_unavailable
        and row.status == "failed"
        and row.reason == ReasonCode.PROVIDER_UNAVAILABLE.value
    )
    if stale or retry:
        return Claim.TAKE_OVER
    return Claim.BUSY if row.status == "pending" else Claim.ANSWER


def response(row: Any) -> dict[str, Any]:
    return {
        "message_id": row.id,
        "decision": {"action": row.action, "mode": row.mode, "reason": row.reason},
        "device_kid": row.device_kid,
        "consent_seq": row.consent_seq,
        "status": row.status,
    }


@dataclass(frozen=True, slots=True)
class Providers:
    rcs: Provider
    sms: Provider
    push: Provider


class Composer:
    """The outbound message for a decision: native E2EE text, an envelope sealed to the
    device key (over RCS, or the app inbox), or a fallback that carries only a secure link
    (and, for non-sensitive templates, the text with its PII tokens removed)."""

    def __init__(self, keystore: KeyStore, providers: Providers, public_url: str) -> None:
        self._keys = keystore
        self.providers = providers
        # Links are always https (a link in clear text must not invite a downgrade). The
        # authenticated landing page behind them is not part of this service yet.
        self._link_base = "https://" + public_url.split("://", 1)[-1]

    @staticmethod
    def content(template: Template, variables: dict[str, Any]) -> dict[str, Any]:
        """The rendered template (PII tokens filled), without empty parts."""
        return {k: v for k, v in render(template, variables).items() if v is not None}

    def outbound(
        self,
        tenant: str,
        message_id: str,
        to: str,
        template: Template,
        variables: dict[str, Any],
        decision: SendDecision,
        public_key: bytes | None,
        report: CapabilityReport,
        now: int,
        content: dict[str, Any] | None = None,
    ) -> tuple[OutboundMessage, Provider]:
        """``content``: :meth:`content` of the template and variables, when the caller has
        it already (a campaign renders its template once per batch)."""
        mode = decision.mode
        if content is None:
            content = self.content(template, variables)
        if mode is DeliveryMode.NATIVE_E2EE:
            text = str(content["text"])
            return OutboundMessage(message_id, to, "rcs", text=text, e2ee=True), self.providers.rcs
        if mode in (DeliveryMode.APP_LAYER, DeliveryMode.IN_APP):
            if public_key is None or decision.suite is None:
                raise RuntimeError("a sealed mode was planned without a device key")
            envelope = seal(
                content,
                recipient_public=public_key,
                suite=decision.suite,
                kid=str(decision.device_kid),
                tenant=tenant,
                message_id=message_id,
                template_id=template.template_id,
                exp=now + int(ENVELOPE_TTL.total_seconds()),
                sign=lambda data: self._keys.sign(tenant, data).signature,
            )
            if mode is DeliveryMode.APP_LAYER:
                return (
                    OutboundMessage(message_id, to, "rcs", text=TEASER, envelope=envelope),
                    self.providers.rcs,
                )
            return (
                OutboundMessage(
                    message_id, to, "push", envelope=envelope, device_kid=decision.device_kid
                ),
                self.providers.push,
            )
        # Fallbacks carry a link to an authenticated landing page, never the content.
        link = f"{self._link_base}/m/{secrets.token_urlsafe(24)}"
        text = (
            secure_link_text(link) if mode is DeliveryMode.SECURE_LINK else redact(template, link)
        )
        if report.rcs:
            return OutboundMessage(message_id, to, "rcs", text=text, link=link), self.providers.rcs
        return OutboundMessage(message_id, to, "sms", text=text, link=link), self.providers.sms


@dataclass(frozen=True, slots=True)
class Outcome:
    """A decision and what became of it. ``failure``: the provider refused or could not be
    reached (the message is then recorded as skipped with that reason, status failed)."""

    message_id: str
    subject_ref: str | None
    hashed_id: str
    decision: SendDecision
    provider: str | None
    provider_message_id: str | None
    status: str  # skipped | sent | failed
    failure: ReasonCode | None = None


@dataclass(frozen=True, slots=True)
class Stored:
    """A message's decision as stored (the attributes :func:`response` reads)."""

    id: str
    action: str
    mode: str | None
    reason: str | None
    device_kid: str | None
    consent_seq: int | None
    status: str
    consent_type: str
    campaign_id: str | None


_FINISH_KEY = {"tenant_id": "varchar", "id": "varchar"}
_FINISH = {
    "subject_ref": "varchar",
    "action": "varchar",
    "mode": "varchar",
    "reason": "varchar",
    "device_kid": "varchar",
    "consent_seq": "bigint",
    "provider": "varchar",
    "provider_message_id": "varchar",
    "status": "varchar",
    "updated_us": "bigint",
}


def record_outcomes(
    conn: Connection,
    tenant: str,
    outcomes: Sequence[Outcome],
    outbox: OutboxWriter | None,
    now_us: int,
    *,
    consent_type: str,
    campaign_id: str | None,
) -> list[Stored]:
    """Store the decisions (one executemany on the driver) and, in the same transaction,
    their ``message.decided`` events (one multi-row insert). All are for one purpose and
    campaign (or none). Returns what was stored, in order."""
    if not outcomes:
        return []
    params = []
    stored = []
    for o in outcomes:
        reason = o.failure or o.decision.reason
        row = Stored(
            o.message_id,
            "skipped" if o.failure is not None else o.decision.action.value,
            None if o.decision.mode is None else o.decision.mode.value,
            None if reason is None else reason.value,
            o.decision.device_kid,
            o.decision.consent_seq,
            o.status,
            consent_type,
            campaign_id,
        )
        stored.append(row)
        params.append(
            {
                "tenant_id": tenant,
                "id": row.id,
                "subject_ref": o.subject_ref,
                "action": row.action,
                "mode": row.mode,
                "reason": row.reason,
                "device_kid": row.device_kid,
                "consent_seq": row.consent_seq,
                "provider": o.provider,
                "provider_message_id": o.provider_message_id,
                "status": row.status,
                "updated_us": now_us,
            }
        )
    bulk.update_rows(conn, "messages", _FINISH_KEY, _FINISH, params)
    if outbox is not None:
        events = [
            outbox_events.message_decided(
                message_id=row.id,
                subject_ref=o.subject_ref,
                hashed_id=o.hashed_id,
                consent_type=consent_type,
                action=row.action,
                mode=row.mode,
                reason=row.reason,
                consent_seq=row.consent_seq,
                campaign_id=campaign_id,
            )
            for o, row in zip(outcomes, stored, strict=True)
        ]
        outbox.record(conn, tenant, events, now_us)
    return stored


def count_decisions(metrics: Metrics, tenant: str, rows: Sequence[Any]) -> None:
    """The send counters for stored rows, one increment per distinct (action, mode, reason)."""
    for (action, mode, reason), n in Counter((r.action, r.mode, r.reason) for r in rows).items():
        metrics.send_decided(tenant, action, mode, reason, n)
