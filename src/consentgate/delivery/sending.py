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

from sqlalchemy import Connection, Row, bindparam, select, update

from consentgate.crypto.envelope import seal
from consentgate.crypto.keystore import KeyStore
from consentgate.delivery.planner import CapabilityReport, DeliveryMode, SendDecision
from consentgate.delivery.providers.base import OutboundMessage, Provider
from consentgate.delivery.templates import Template, redact, render, secure_link_text
from consentgate.domain.reasons import ReasonCode
from consentgate.observability.metrics import Metrics
from consentgate.outbox import events as outbox_events
from consentgate.outbox.store import OutboxWriter
from consentgate.storage.tables import messages

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
    ) -> tuple[OutboundMessage, Provider]:
        mode = decision.mode
        content = {k: v for k, v in render(template, variables).items() if v is not None}
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


_FINISH = (
    update(messages)
    .where(messages.c.tenant_id == bindparam("b_tenant"), messages.c.id == bindparam("b_id"))
    .values(
        subject_ref=bindparam("b_ref"),
        action=bindparam("b_action"),
        mode=bindparam("b_mode"),
        reason=bindparam("b_reason"),
        device_kid=bindparam("b_kid"),
        consent_seq=bindparam("b_seq"),
        provider=bindparam("b_provider"),
        provider_message_id=bindparam("b_pmid"),
        status=bindparam("b_status"),
        updated_us=bindparam("b_now"),
    )
)


def record_outcomes(
    conn: Connection,
    tenant: str,
    outcomes: Sequence[Outcome],
    outbox: OutboxWriter | None,
    now_us: int,
) -> list[Row[Any]]:
    """Store the decisions (one executemany) and, in the same transaction, their
    ``message.decided`` events (one multi-row insert). Returns the stored rows, in order."""
    if not outcomes:
        return []
    params = []
    for o in outcomes:
        reason = o.failure or o.decision.reason
        params.append(
            {
                "b_tenant": tenant,
                "b_id": o.message_id,
                "b_ref": o.subject_ref,
                "b_action": "skipped" if o.failure is not None else o.decision.action.value,
                "b_mode": None if o.decision.mode is None else o.decision.mode.value,
                "b_reason": None if reason is None else reason.value,
                "b_kid": o.decision.device_kid,
                "b_seq": o.decision.consent_seq,
                "b_provider": o.provider,
                "b_pmid": o.provider_message_id,
                "b_status": o.status,
                "b_now": now_us,
            }
        )
    conn.execute(_FINISH, params)
    ids = [o.message_id for o in outcomes]
    by_id: dict[str, Row[Any]] = {}
    for start in range(0, len(ids), 500):
        for row in conn.execute(
            select(messages).where(messages.c.id.in_(ids[start : start + 500]))
        ):
            by_id[row.id] = row
    rows = [by_id[i] for i in ids]
    if outbox is not None:
        events = [
            outbox_events.message_decided(
                message_id=row.id,
                subject_ref=o.subject_ref,
                hashed_id=o.hashed_id,
                consent_type=row.consent_type,
                action=row.action,
                mode=row.mode,
                reason=row.reason,
                consent_seq=row.consent_seq,
                campaign_id=row.campaign_id,
            )
            for o, row in zip(outcomes, rows, strict=True)
        ]
        outbox.record(conn, tenant, events, now_us)
    return rows


def count_decisions(metrics: Metrics, tenant: str, rows: Sequence[Any]) -> None:
    """The send counters for stored rows, one increment per distinct (action, mode, reason)."""
    for (action, mode, reason), n in Counter((r.action, r.mode, r.reason) for r in rows).items():
        metrics.send_decided(tenant, action, mode, reason, n)
