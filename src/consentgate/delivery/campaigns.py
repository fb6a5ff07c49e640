"""Campaigns: a streamed audience, a set-based pre-filter, a durable dispatch queue.

The audience is read row by row (CSV with a ``phone`` column, or NDJSON ``{"phone": ...}``)
and written in batches, so a million rows never sit in memory. Each number is hashed for the
pre-filter and stored only encrypted (AES-256-GCM under its own data key, which the key store
wraps); both are erased when the recipient's message completes.

Dispatch is claim-based: a worker claims a batch of due recipients with a lease (``due_us``);
one that dies leaves its claims to expire and be claimed again. Each recipient is sent under
the idempotency key ``campaign:<id>:<seq>``, so a re-claimed recipient is never sent twice,
and consent is checked again at that moment for the whole batch: a withdrawal after the
pre-filter stops the send (:mod:`consentgate.delivery.dispatch`).
"""

from __future__ import annotations

import csv
import io
import threading
import uuid
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, select, update

from consentgate.consent.subjects import SubjectLinks
from consentgate.crypto.keystore import KeyStore
from consentgate.delivery.dispatch import Dispatcher
from consentgate.delivery.registry import Registry
from consentgate.delivery.sealed import seal_number
from consentgate.domain import strictjson
from consentgate.domain.clock import Clock
from consentgate.domain.identity import normalise_phones
from consentgate.domain.reasons import ReasonCode
from consentgate.domain.timeutil import to_micros
from consentgate.errors import Conflict, InvalidInput, NotFound
from consentgate.gate.gate import ConsentGate
from consentgate.observability.metrics import Metrics
from consentgate.storage.engine import read_tx, write_tx
from consentgate.storage.tables import campaign_recipients, campaigns
from consentgate.tenants.service import TenantService

BATCH = 1000  # audience rows normalised, hashed and inserted at once


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
                value = strictjson.loads(line)
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
        dispatcher: Dispatcher,
        keystore: KeyStore,
        clock: Clock,
        batch: int = 500,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics or Metrics()
        self._engine = engine
        self._tenants = tenants
        self._links = links
        self._gate = gate
        self._registry = registry
        self._dispatcher = dispatcher
        self._batch = batch
        self._keys = keystore
        self._clock = clock

    def _now(self) -> int:
        return to_micros(self._clock.now())

    def create(self, tenant: str, template_id: str, consent_type: str) -> str:
        if consent_type not in self._tenants.catalogue(tenant):
            raise InvalidInput("unknown consent_type", field="consent_type")
        try:
            template = self._registry.template(tenant, template_id)
        except NotFound:
            raise InvalidInput("template_id names no template", field="template_id") from None
        if template.tokens:
            # An audience is numbers only: nothing could fill the tokens of a recipient.
            raise InvalidInput(
                "a campaign's template cannot have PII tokens (the audience carries no "
                "variables); use a template without {{...}} or POST /v1/messages",
                field="template_id",
            )
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
            except (UnicodeDecodeError, strictjson.NotJson, csv.Error):
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
            sealed, wrapped = seal_number(self._keys, tenant, f"{campaign_id}:{seq}", e164)
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

    def dispatch_once(self, limit: int | None = None, cancel: threading.Event | None = None) -> int:
        """Claim and send up to ``limit`` (default: the dispatch batch) due recipients; return
        how many were handled (:mod:`consentgate.delivery.dispatch`)."""
        return self._dispatcher.dispatch_once(self._batch if limit is None else limit, cancel)

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
