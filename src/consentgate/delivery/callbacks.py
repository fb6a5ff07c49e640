"""Provider callbacks: delivery and read receipts, failures, inbound replies, unsubscribes.

A provider posts to ``/v1/providers/{provider}/callbacks``; the provider's adapter
authenticates the request by its signature and reads it into :class:`ProviderEvent` s.

Receipts (``delivered`` / ``read`` / ``failed``) are matched to the stored message by
(provider, provider_message_id). Each adds a ``message_events`` row and moves the message's
status forward, in one transaction; a status never moves backwards (:data:`STATUS_RANK`:
``revoked`` > ``read`` > ``delivered`` > ``failed`` > ``sent``); a final receipt also drops
the number kept for revocation (:mod:`consentgate.delivery.revocation`). A receipt for an
unknown message changes nothing and is counted as ``ignored``; a redelivered receipt adds no
second row.

Withdrawals. An ``unsubscribe`` event (RBM's UNSUBSCRIBE, Twilio's ``OptOutType=STOP``) or an
inbound text that is a stop keyword (:data:`STOP_KEYWORDS`, matched on the whole text,
trimmed, case-insensitively: ``"  stop "`` is one, ``"please stop"`` is not) withdraws the
sender's consent to every *marketing* purpose of the tenant, i.e. every purpose whose name
starts with :data:`MARKETING_PREFIX` (``marketing_rcs``, ...). Transactional and other
purposes are left alone: STOP ends promotions, not the service messages the person asked for.

The callback names no tenant. The tenant (and subject) is the one of the message the event
refers to when its provider message id is one of ours; otherwise the sender's number is
hashed under each tenant's salts and looked up, and the withdrawal is recorded for every
tenant where the number is a known subject. Unknown senders are ignored (no subject is ever
created from a callback). The number lives in memory only: it is never logged or stored, and
the events are ingested by ``hashed_id``.

Each withdrawal is an ordinary consent event (``status=withdrawn``,
``source=inbound_keyword``, ``timestamp`` = when the person acted per the provider, clamped
to now if it lies in the future) committed through the group committer, so it lands in the
ledger and the state view like any other event and evicts the gate's cache before the
callback is answered. Its ``consent_id`` is derived from the provider's own event id
(``{provider}:{event id}:{purpose}``), so a redelivered callback is an identical replay, not
a second withdrawal.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, insert, select, update

from consentgate.consent.group_commit import GroupCommitter
from consentgate.consent.ingest import EventInput, IngestService
from consentgate.consent.subjects import SubjectLinks
from consentgate.delivery.messages import Providers
from consentgate.delivery.providers.base import Provider, ProviderEvent
from consentgate.domain.clock import Clock
from consentgate.domain.consent import ConsentStatus, Source
from consentgate.domain.identity import normalise_phone
from consentgate.domain.timeutil import format_rfc3339, from_micros, to_micros
from consentgate.errors import Conflict, ConsentGateError, InvalidInput, NotFound
from consentgate.observability.metrics import Metrics
from consentgate.outbox import events as outbox_events
from consentgate.outbox.store import OutboxWriter
from consentgate.storage.engine import read_tx, write_tx
from consentgate.storage.tables import (
    message_events,
    messages,
    revocable_messages,
    subject_links,
)
from consentgate.tenants.service import TenantService

log = logging.getLogger("consentgate.callbacks")

#: Whole-message replies that withdraw marketing consent (trimmed, case-insensitive): the
#: CTIA / carrier opt-out keywords.
STOP_KEYWORDS = frozenset({"stop", "unsubscribe", "stopall", "cancel", "end", "quit"})
#: A purpose is a marketing purpose, withdrawn by STOP, when its name starts with this.
MARKETING_PREFIX = "marketing"
#: Message status order: a receipt only ever moves a message's status up this ladder.
STATUS_RANK = {"pending": 0, "sent": 1, "failed": 2, "delivered": 3, "read": 4, "revoked": 5}

_RECEIPTS = frozenset({"delivered", "read", "failed"})
_SAFE_KEY = re.compile(r"^[A-Za-z0-9._~-]{1,120}$")


def is_stop_keyword(text: str | None) -> bool:
    """True when the whole reply, trimmed and case-insensitive, is a stop keyword."""
    return text is not None and text.strip().casefold() in STOP_KEYWORDS


def marketing_purposes(catalogue: Mapping[str, object]) -> list[str]:
    """The purposes a stop keyword withdraws: those named ``marketing...``."""
    return sorted(name for name in catalogue if name.startswith(MARKETING_PREFIX))


@dataclass(frozen=True, slots=True)
class _Target:
    """One subject of one tenant a withdrawal applies to (the number already hashed)."""

    tenant: str
    subject_ref: str
    hashed_id: str


@dataclass(slots=True)
class _Summary:
    events: int = 0
    linked: int = 0
    ignored: int = 0
    withdrawals: int = 0
    replayed: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "events": self.events,
            "linked": self.linked,
            "ignored": self.ignored,
            "withdrawals": self.withdrawals,
            "replayed": self.replayed,
        }


class CallbackService:
    def __init__(
        self,
        engine: Engine,
        tenants: TenantService,
        links: SubjectLinks,
        ingest: IngestService,
        committer: GroupCommitter,
        providers: Providers,
        clock: Clock,
        metrics: Metrics | None = None,
        outbox: OutboxWriter | None = None,
    ) -> None:
        self._metrics = metrics or Metrics()
        self._outbox = outbox
        self._engine = engine
        self._tenants = tenants
        self._links = links
        self._ingest = ingest
        self._committer = committer
        self._providers: dict[str, Provider] = {
            p.name: p for p in (providers.rcs, providers.sms, providers.push)
        }
        self._clock = clock

    def provider(self, name: str) -> Provider:
        """The provider called ``name`` (``rbm``, ``sms``, ``push``); NotFound otherwise."""
        found = self._providers.get(name)
        if found is None:
            raise NotFound("no provider with this name")
        return found

    # -- callbacks -------------------------------------------------------------------------

    def handle(self, provider_name: str, headers: Mapping[str, str], body: bytes) -> dict[str, int]:
        """Authenticate and apply one callback. Returns ``{events, linked, ignored,
        withdrawals, replayed}``: events read from the callback; receipts matched to a stored
        message; events that named no known message or subject; withdrawal events newly
        recorded in the ledger; withdrawal events that were already recorded (a redelivery).

        Raises CallbackUnauthenticated (401), CallbackMalformed (422), NotFound (404)."""
        provider = self.provider(provider_name)
        events = provider.parse_callback(headers, body)
        event_id = _rbm_event_id(body) if provider.name == "rbm" and len(events) == 1 else None
        summary = _Summary(events=len(events))
        for event in events:
            if event.kind in _RECEIPTS:
                linked = self._record_receipt(provider.name, event)
                self._metrics.receipt(provider.name, event.kind, linked)
                if linked:
                    summary.linked += 1
                else:
                    summary.ignored += 1
            elif event.kind == "unsubscribe" or (
                event.kind == "inbound" and is_stop_keyword(event.text)
            ):
                self._withdraw(provider.name, event, event_id, summary)
            # Other inbound replies carry nothing consentgate acts on.
        return summary.as_dict()

    def _record_receipt(self, provider: str, event: ProviderEvent) -> bool:
        """Add the receipt to its message and move the status up; False if no message."""
        if not event.provider_message_id:
            return False
        at_us = to_micros(event.at)
        lower = [s for s, rank in STATUS_RANK.items() if rank < STATUS_RANK[event.kind]]
        with write_tx(self._engine) as conn:
            rows = conn.execute(
                select(
                    messages.c.id,
                    messages.c.tenant_id,
                    messages.c.subject_ref,
                    messages.c.consent_type,
                    messages.c.campaign_id,
                ).where(
                    messages.c.provider == provider,
                    messages.c.provider_message_id == event.provider_message_id,
                )
            ).all()
            for row in rows:
                seen = conn.execute(
                    select(message_events.c.id).where(
                        message_events.c.message_id == row.id,
                        message_events.c.kind == event.kind,
                        message_events.c.at_us == at_us,
                    )
                ).first()
                if seen is None:
                    conn.execute(
                        insert(message_events).values(
                            id=str(uuid.uuid4()),
                            tenant_id=row.tenant_id,
                            message_id=row.id,
                            kind=event.kind,
                            at_us=at_us,
                        )
                    )
                    if self._outbox is not None and row.subject_ref is not None:
                        receipt = outbox_events.message_receipt(
                            event.kind,
                            message_id=row.id,
                            subject_ref=row.subject_ref,
                            consent_type=row.consent_type,
                            campaign_id=row.campaign_id,
                            provider=provider,
                            at=format_rfc3339(from_micros(at_us)),
                        )
                        self._outbox.record(
                            conn, row.tenant_id, [receipt], to_micros(self._clock.now())
                        )
                conn.execute(
                    update(messages)
                    .where(and_(messages.c.id == row.id, messages.c.status.in_(lower)))
                    .values(status=event.kind, updated_us=to_micros(self._clock.now()))
                )
                # Delivered (or failed for good): nothing left to revoke, the number goes.
                conn.execute(
                    delete(revocable_messages).where(revocable_messages.c.message_id == row.id)
                )
        return bool(rows)

    def _withdraw(
        self, provider: str, event: ProviderEvent, event_id: str | None, summary: _Summary
    ) -> None:
        targets = self._targets(provider, event)
        if not targets:
            summary.ignored += 1
            return
        at = min(event.at, self._clock.now())
        for target in targets:
            purposes = marketing_purposes(self._tenants.catalogue(target.tenant))
            if not purposes:
                continue
            key = _event_key(provider, event, event_id, target, at)
            inputs = [
                EventInput(
                    consent_id=f"{key}:{purpose}",
                    consent_type=purpose,
                    status=ConsentStatus.WITHDRAWN.value,
                    timestamp=format_rfc3339(at),
                    source=Source.INBOUND_KEYWORD.value,
                    hashed_id=target.hashed_id,
                )
                for purpose in purposes
            ]
            try:
                prepared = self._ingest.prepare(target.tenant, None, inputs, batch=True)
                results = self._committer.submit(target.tenant, prepared)
            except Conflict:
                # The consent_id is recorded with other content (a redelivery whose clamped
                # time moved): the withdrawal for this provider event is already in the ledger.
                summary.replayed += len(inputs)
                continue
            created = sum(1 for r in results if r.created)
            summary.withdrawals += created
            summary.replayed += len(results) - created

    def _targets(self, provider: str, event: ProviderEvent) -> list[_Target]:
        """Whose consent the event withdraws: the subject of the message it refers to, else
        every tenant's subject known by the sender's number."""
        with read_tx(self._engine) as conn:
            if event.provider_message_id:
                by_message = self._by_message(conn, provider, event.provider_message_id)
                if by_message:
                    return by_message
            if not event.from_phone:
                return []
            try:
                phone = normalise_phone(event.from_phone, None, field="from")
            except InvalidInput:
                return []
            targets: list[_Target] = []
            for tenant in self._tenants.names():
                try:
                    found = self._links.find(
                        conn, tenant, self._links.hash_identifier(tenant, phone)
                    )
                except ConsentGateError as exc:  # ambiguous links, a tenant without keys
                    log.warning("callback: tenant %s skipped (%s)", tenant, exc.code)
                    continue
                if found is not None:
                    targets.append(_Target(tenant, found[0], found[1]))
            return targets

    def _by_message(
        self, conn: Connection, provider: str, provider_message_id: str
    ) -> list[_Target]:
        rows = conn.execute(
            select(messages.c.tenant_id, messages.c.subject_ref).where(
                messages.c.provider == provider,
                messages.c.provider_message_id == provider_message_id,
                messages.c.subject_ref.is_not(None),
            )
        ).all()
        targets: list[_Target] = []
        for row in rows:
            hashed_id = conn.execute(
                select(subject_links.c.hashed_id)
                .where(
                    subject_links.c.tenant_id == row.tenant_id,
                    subject_links.c.subject_ref == row.subject_ref,
                )
                .order_by(subject_links.c.salt_version.desc(), subject_links.c.hashed_id)
                .limit(1)
            ).scalar()
            if hashed_id is not None:  # None: the subject was erased since
                targets.append(_Target(row.tenant_id, row.subject_ref, str(hashed_id)))
        return targets

    # -- reading a message -------------------------------------------------------------------

    def message(self, tenant: str, message_id: str) -> dict[str, Any]:
        """A message's decision, current status and receipts (oldest first)."""
        with read_tx(self._engine) as conn:
            row = conn.execute(
                select(
                    messages.c.id,
                    messages.c.status,
                    messages.c.action,
                    messages.c.mode,
                    messages.c.reason,
                ).where(messages.c.tenant_id == tenant, messages.c.id == message_id)
            ).one_or_none()
            if row is None:
                raise NotFound("no message with this id")
            events = conn.execute(
                select(message_events.c.kind, message_events.c.at_us)
                .where(
                    message_events.c.tenant_id == tenant,
                    message_events.c.message_id == message_id,
                )
                .order_by(message_events.c.at_us, message_events.c.id)
            ).all()
        return {
            "message_id": row.id,
            "status": row.status,
            "decision": {"action": row.action, "mode": row.mode, "reason": row.reason},
            "events": [
                {"kind": e.kind, "at": format_rfc3339(from_micros(e.at_us))} for e in events
            ],
        }


def _event_key(
    provider: str, event: ProviderEvent, event_id: str | None, target: _Target, at: datetime
) -> str:
    """A stable name for the provider event, the prefix of its withdrawals' consent_ids.

    The provider's event id (RBM ``eventId``) or message id (an RBM user message's own id,
    Twilio's ``MessageSid``) when there is one; otherwise a digest of what identifies the
    event for this subject (its random ``subject_ref``: never the number, nor its keyed hash,
    which would tie the leaf to the number for good even after the subject's erasure)."""
    given = event_id or event.provider_message_id
    if given:
        if _SAFE_KEY.match(given):
            return f"{provider}:{given}"
        digest = hashlib.sha256(given.encode("utf-8", "surrogatepass")).hexdigest()[:40]
        return f"{provider}:h{digest}"
    material = f"{target.subject_ref}|{event.kind}|{to_micros(at)}|{event.text or ''}"
    digest = hashlib.sha256(material.encode("utf-8", "surrogatepass")).hexdigest()[:40]
    return f"{provider}:d{digest}"


def _rbm_event_id(body: bytes) -> str | None:
    """RBM's ``eventId`` of a user event (UNSUBSCRIBE, ...), which :class:`ProviderEvent`
    does not carry. Call only after the adapter verified the body."""
    try:
        data = base64.b64decode(json.loads(body)["message"]["data"], validate=True)
        event = json.loads(data)
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, binascii.Error, RecursionError):
        return None
    value = event.get("eventId") if isinstance(event, dict) else None
    return value if isinstance(value, str) and value else None


__all__ = [
    "MARKETING_PREFIX",
    "STATUS_RANK",
    "STOP_KEYWORDS",
    "CallbackService",
    "is_stop_keyword",
    "marketing_purposes",
]
