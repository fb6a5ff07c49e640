"""Campaigns: a streamed audience, a set-based pre-filter, a durable dispatch queue.

The audience is read row by row (CSV with a ``phone`` column, or NDJSON ``{"phone": ...}``)
and written in batches, so a million rows never sit in memory. Each number is hashed for the
pre-filter and stored only encrypted (AES-256-GCM under its own data key, which the key store
wraps); both are erased when the recipient's message completes.

Dispatch is claim-based: a worker claims a batch of due recipients with a lease (``due_us``);
one that dies leaves its claims to expire and be claimed again. Each send goes through
:meth:`MessageService.send` with an idempotency key per recipient, so a re-claimed recipient
is never sent twice, and consent is checked again at that moment: a withdrawal after the
pre-filter stops the send.
"""

from __future__ import annotations

import csv
import io
import json
import secrets
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Connection, Engine, func, insert, select, update

from consentgate.consent.subjects import SubjectLinks
from consentgate.crypto.keystore import KeyStore
from consentgate.delivery.messages import MessageService
from consentgate.delivery.registry import Registry
from consentgate.domain.clock import Clock
from consentgate.domain.identity import Identifier, IdentifierKind, normalise_phones
from consentgate.domain.reasons import ReasonCode
from consentgate.domain.timeutil import to_micros
from consentgate.errors import Conflict, ConsentGateError, InvalidInput, NotFound
from consentgate.gate.gate import ConsentGate
from consentgate.observability.metrics import Metrics
from consentgate.outbox import events as outbox_events
from consentgate.outbox.store import OutboxWriter
from consentgate.storage.engine import read_tx, write_tx
from consentgate.storage.tables import campaign_recipients, campaigns, subject_links
from consentgate.tenants.service import TenantService

BATCH = 1000
MAX_ATTEMPTS = 5
RETRY_BASE = timedelta(seconds=2)


def _rows(chunks: Iterator[bytes], content_type: str) -> Iterator[str]:
    """Phone strings from a streamed CSV or NDJSON body, one line at a time."""
    ndjson = "ndjson" in content_type or "jsonl" in content_type
    pending = b""
    header: list[str] | None = None
    for chunk in _with_tail(chunks):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8").strip()
            if not line:
                continue
            if ndjson:
                value = json.loads(line)
                if not isinstance(value, dict) or not isinstance(value.get("phone"), str):
                    raise InvalidInput(
                        'each NDJSON line must be {"phone": "..."}', field="audience"
                    )
                yield value["phone"]
                continue
            fields = next(csv.reader(io.StringIO(line)))
            if header is None:
                header = [f.strip().lower() for f in fields]
                if "phone" not in header:
                    raise InvalidInput("the CSV header must have a phone column", field="audience")
                continue
            yield fields[header.index("phone")] if len(fields) > header.index("phone") else ""


def _with_tail(chunks: Iterator[bytes]) -> Iterator[bytes]:
    yield from chunks
    yield b"\n"


class CampaignService:
    def __init__(
        self,
        engine: Engine,
        tenants: TenantService,
        links: SubjectLinks,
        gate: ConsentGate,
        registry: Registry,
        messages: MessageService,
        keystore: KeyStore,
        clock: Clock,
        lease: timedelta = timedelta(seconds=60),
        metrics: Metrics | None = None,
        outbox: OutboxWriter | None = None,
    ) -> None:
        self._metrics = metrics or Metrics()
        self._outbox = outbox
        self._lease_us = int(lease.total_seconds() * 1_000_000)
        self._engine = engine
        self._tenants = tenants
        self._links = links
        self._gate = gate
        self._registry = registry
        self._messages = messages
        self._keys = keystore
        self._clock = clock

    def _now(self) -> int:
        return to_micros(self._clock.now())

    def create(self, tenant: str, template_id: str, consent_type: str) -> str:
        if consent_type not in self._tenants.catalogue(tenant):
            raise InvalidInput("unknown consent_type", field="consent_type")
        try:
            self._registry.template(tenant, template_id)
        except NotFound:
            raise InvalidInput("template_id names no template", field="template_id") from None
        campaign_id, now = str(uuid.uuid4()), self._now()
        with write_tx(self._engine) as conn:
            conn.execute(
                insert(campaigns).values(
                    id=campaign_id,
                    tenant_id=tenant,
                    template_id=template_id,
                    consent_type=consent_type,
                    status="draft",
                    total=0,
                    created_us=now,
                    updated_us=now,
                )
            )
        return campaign_id

    def _campaign(self, conn: Any, tenant: str, campaign_id: str) -> Any:
        row = conn.execute(
            select(campaigns).where(campaigns.c.tenant_id == tenant, campaigns.c.id == campaign_id)
        ).one_or_none()
        if row is None:
            raise NotFound("no such campaign")
        return row

    def _seal(self, tenant: str, campaign_id: str, seq: int, e164: str) -> tuple[bytes, bytes]:
        key = AESGCM.generate_key(bit_length=256)
        nonce = secrets.token_bytes(12)
        context = f"{campaign_id}:{seq}"
        sealed = nonce + AESGCM(key).encrypt(nonce, e164.encode(), context.encode())
        return sealed, self._keys.wrap_data_key(tenant, key, context)

    def _unseal(
        self, tenant: str, campaign_id: str, seq: int, sealed: bytes, wrapped: bytes
    ) -> str:
        context = f"{campaign_id}:{seq}"
        key = self._keys.unwrap_data_key(tenant, wrapped, context)
        return AESGCM(key).decrypt(sealed[:12], sealed[12:], context.encode()).decode()

    def upload(
        self,
        tenant: str,
        region: str | None,
        campaign_id: str,
        chunks: Iterator[bytes],
        content_type: str,
    ) -> dict[str, Any]:
        """Replace the audience (draft campaigns only); all-or-nothing. Invalid numbers are
        counted (by row number), never echoed."""
        now = self._now()
        accepted = 0
        invalid: list[int] = []
        with write_tx(self._engine) as conn:
            row = self._campaign(conn, tenant, campaign_id)
            if row.status != "draft":
                raise Conflict("the audience can change only while the campaign is a draft")
            conn.execute(
                campaign_recipients.delete().where(campaign_recipients.c.campaign_id == campaign_id)
            )
            pending: list[tuple[int, str]] = []  # (row number, raw), normalised a batch at once
            try:
                for number, raw in enumerate(_rows(chunks, content_type), start=1):
                    pending.append((number, raw))
                    if len(pending) >= BATCH:
                        accepted += self._store_batch(
                            conn, tenant, region, campaign_id, pending, accepted, invalid, now
                        )
                        pending = []
            except (UnicodeDecodeError, json.JSONDecodeError, csv.Error):
                raise InvalidInput(
                    "the audience is not UTF-8 CSV or NDJSON", field="audience"
                ) from None
            if pending:
                accepted += self._store_batch(
                    conn, tenant, region, campaign_id, pending, accepted, invalid, now
                )
            conn.execute(
                update(campaigns)
                .where(campaigns.c.id == campaign_id)
                .values(total=accepted, updated_us=now)
            )
        return {
            "campaign_id": campaign_id,
            "accepted": accepted,
            "invalid": len(invalid),
            "invalid_rows": invalid[:100],
        }

    def _store_batch(
        self,
        conn: Connection,
        tenant: str,
        region: str | None,
        campaign_id: str,
        pending: list[tuple[int, str]],
        first_seq: int,
        invalid: list[int],
        now: int,
    ) -> int:
        """Normalise and hash a batch of rows in bulk (same answers as one by one), seal and
        insert the valid ones from ``first_seq`` on; add invalid row numbers to ``invalid``.
        Returns how many were stored."""
        phones = normalise_phones([raw for _, raw in pending], region)
        invalid.extend(pending[i][0] for i in phones.invalid)
        valid = [v for v in phones.values if v is not None]
        rows = []
        for seq, (e164, hashed_id) in enumerate(
            zip(valid, self._links.current_hashes(tenant, valid), strict=True), start=first_seq
        ):
            sealed, wrapped = self._seal(tenant, campaign_id, seq, e164)
            rows.append(
                {
                    "campaign_id": campaign_id,
                    "seq": seq,
                    "tenant_id": tenant,
                    "hashed_id": hashed_id,
                    "sealed": sealed,
                    "wrapped_key": wrapped,
                    "state": "pending",
                    "attempts": 0,
                    "due_us": now,
                }
            )
        if rows:
            conn.execute(insert(campaign_recipients), rows)
        return len(rows)

    def send(self, tenant: str, campaign_id: str) -> dict[str, Any]:
        """Pre-filter the audience in one set-based pass; queue who may be messaged."""
        now = self._now()
        with read_tx(self._engine) as conn:
            row = self._campaign(conn, tenant, campaign_id)
            if row.status != "draft":
                raise Conflict("this campaign was already sent")
            audience = conn.execute(
                select(campaign_recipients.c.seq, campaign_recipients.c.hashed_id).where(
                    campaign_recipients.c.campaign_id == campaign_id,
                    # Not those already settled (a recipient erased while this was a draft).
                    campaign_recipients.c.state == "pending",
                )
            ).all()
        decisions = self._gate.prefilter(tenant, [a.hashed_id for a in audience], row.consent_type)
        with write_tx(self._engine) as conn:
            skipped: dict[str, list[int]] = {}
            queued: list[int] = []
            for a in audience:
                d = decisions[a.hashed_id]
                if d.allowed:
                    queued.append(a.seq)
                else:
                    skipped.setdefault((d.reason or ReasonCode.NO_CONSENT).value, []).append(a.seq)
            for reason, seqs in skipped.items():
                for start in range(0, len(seqs), BATCH):
                    conn.execute(
                        update(campaign_recipients)
                        .where(
                            campaign_recipients.c.campaign_id == campaign_id,
                            campaign_recipients.c.seq.in_(seqs[start : start + BATCH]),
                        )
                        .values(
                            state="done",
                            action="skipped",
                            reason=reason,
                            sealed=None,
                            wrapped_key=None,
                        )
                    )
            conn.execute(
                update(campaign_recipients)
                .where(
                    campaign_recipients.c.campaign_id == campaign_id,
                    campaign_recipients.c.state == "pending",
                )
                .values(state="queued", due_us=now)
            )
            conn.execute(
                update(campaigns)
                .where(campaigns.c.id == campaign_id)
                .values(status="queued" if queued else "done", updated_us=now)
            )
        self._metrics.campaign_recipients(tenant, "queued", len(queued))
        self._metrics.campaign_recipients(tenant, "skipped", sum(map(len, skipped.values())))
        return self.status(tenant, campaign_id)

    def dispatch_once(self, limit: int = 50) -> int:
        """Claim and send up to ``limit`` due recipients; return how many were handled."""
        now = self._now()
        lease = now + self._lease_us
        with write_tx(self._engine) as conn:
            due = (
                select(campaign_recipients.c.campaign_id, campaign_recipients.c.seq)
                .where(
                    campaign_recipients.c.state.in_(["queued", "claimed"]),
                    campaign_recipients.c.due_us <= now,
                )
                .order_by(campaign_recipients.c.due_us)
                .limit(limit)
            )
            if conn.dialect.name == "postgresql":
                due = due.with_for_update(skip_locked=True)
            claimed = conn.execute(due).all()
            for c in claimed:
                conn.execute(
                    update(campaign_recipients)
                    .where(
                        campaign_recipients.c.campaign_id == c.campaign_id,
                        campaign_recipients.c.seq == c.seq,
                    )
                    .values(
                        state="claimed", due_us=lease, attempts=campaign_recipients.c.attempts + 1
                    )
                )
            rows = (
                conn.execute(
                    select(campaign_recipients, campaigns.c.template_id, campaigns.c.consent_type)
                    .join(campaigns, campaigns.c.id == campaign_recipients.c.campaign_id)
                    .where(
                        campaign_recipients.c.campaign_id.in_({c.campaign_id for c in claimed}),
                        campaign_recipients.c.seq.in_([c.seq for c in claimed]),
                        campaign_recipients.c.state == "claimed",
                        campaign_recipients.c.due_us == lease,
                    )
                ).all()
                if claimed
                else []
            )
            for campaign_id in {r.campaign_id for r in rows}:
                conn.execute(
                    update(campaigns)
                    .where(campaigns.c.id == campaign_id, campaigns.c.status == "queued")
                    .values(status="running", updated_us=now)
                )
        for r in rows:
            self._deliver(r)
        self._close_finished({r.campaign_id for r in rows})
        return len(rows)

    def _deliver(self, r: Any) -> None:
        values: dict[str, Any]
        try:
            e164 = self._unseal(r.tenant_id, r.campaign_id, r.seq, r.sealed, r.wrapped_key)
            answer = self._messages.send(
                r.tenant_id,
                Identifier(IdentifierKind.PHONE, e164),
                r.consent_type,
                r.template_id,
                {},
                f"campaign:{r.campaign_id}:{r.seq}",
                campaign_id=r.campaign_id,
                retry_unavailable=True,
            )
            decision = answer["decision"]
            unavailable = decision["reason"] == ReasonCode.PROVIDER_UNAVAILABLE.value and (
                answer["status"] == "failed"
            )
            if unavailable and r.attempts < MAX_ATTEMPTS:
                backoff = RETRY_BASE * (2 ** (r.attempts - 1))
                values = {"state": "queued", "due_us": self._now() + to_micros_delta(backoff)}
            else:
                values = {
                    "state": "done",
                    "action": decision["action"],
                    "mode": decision["mode"],
                    "reason": decision["reason"],
                    "message_id": answer["message_id"],
                    "sealed": None,
                    "wrapped_key": None,
                }
        except (ConsentGateError, ValueError):
            # Not sendable as stored (e.g. the template was removed): record and purge.
            values = {
                "state": "done",
                "action": "skipped",
                "reason": "ambiguous",
                "sealed": None,
                "wrapped_key": None,
            }
        with write_tx(self._engine) as conn:
            conn.execute(
                update(campaign_recipients)
                .where(
                    campaign_recipients.c.campaign_id == r.campaign_id,
                    campaign_recipients.c.seq == r.seq,
                )
                .values(**values)
            )
            if "message_id" not in values and values["state"] == "done":
                self._decided_without_message(conn, r)
        self._metrics.campaign_recipients(
            r.tenant_id, "retried" if values["state"] == "queued" else "done"
        )

    def _decided_without_message(self, conn: Connection, r: Any) -> None:
        """A recipient settled without a message (it could not be sent as stored): its
        ``message.decided`` (no message_id) goes out like any other decision."""
        if self._outbox is None or r.hashed_id is None:
            return
        ref = conn.execute(
            select(subject_links.c.subject_ref).where(
                subject_links.c.tenant_id == r.tenant_id,
                subject_links.c.hashed_id == r.hashed_id,
            )
        ).scalar()
        event = outbox_events.message_decided(
            message_id=None,
            subject_ref=ref,
            hashed_id=r.hashed_id,
            consent_type=r.consent_type,
            action="skipped",
            mode=None,
            reason=ReasonCode.AMBIGUOUS.value,
            consent_seq=None,
            campaign_id=r.campaign_id,
        )
        self._outbox.record(conn, r.tenant_id, [event], self._now())

    def _close_finished(self, campaign_ids: set[str]) -> None:
        for campaign_id in campaign_ids:
            with write_tx(self._engine) as conn:
                open_ = conn.execute(
                    select(func.count())
                    .select_from(campaign_recipients)
                    .where(
                        campaign_recipients.c.campaign_id == campaign_id,
                        campaign_recipients.c.state != "done",
                    )
                ).scalar_one()
                if open_ == 0:
                    conn.execute(
                        update(campaigns)
                        .where(campaigns.c.id == campaign_id)
                        .values(status="done", updated_us=self._now())
                    )

    def status(self, tenant: str, campaign_id: str) -> dict[str, Any]:
        with read_tx(self._engine) as conn:
            row = self._campaign(conn, tenant, campaign_id)
            counts = conn.execute(
                select(campaign_recipients.c.action, campaign_recipients.c.reason, func.count())
                .where(
                    campaign_recipients.c.campaign_id == campaign_id,
                    campaign_recipients.c.state == "done",
                )
                .group_by(campaign_recipients.c.action, campaign_recipients.c.reason)
            ).all()
        by_action = {"sent": 0, "skipped": 0, "fallback": 0}
        by_reason: dict[str, int] = {}
        for action, reason, n in counts:
            by_action[action] = by_action.get(action, 0) + int(n)
            if reason:
                by_reason[reason] = by_reason.get(reason, 0) + int(n)
        return {
            "campaign_id": campaign_id,
            "status": row.status,
            "total": int(row.total),
            **by_action,
            "by_reason": by_reason,
        }


def to_micros_delta(delta: timedelta) -> int:
    return int(delta.total_seconds() * 1_000_000)
