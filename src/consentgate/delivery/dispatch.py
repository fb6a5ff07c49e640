"""Batched campaign dispatch: hundreds of recipients per pass, each with every guarantee of a
single ``POST /v1/messages``, at the cost of a few statements and one HTTP connection per
sending thread instead of several of each per message.

One pass (:meth:`Dispatcher.dispatch_once`):

1. claim up to ``batch`` due recipients with a lease (one transaction; on PostgreSQL
   ``FOR UPDATE SKIP LOCKED``): a worker that dies leaves them to be claimed again;
2. unseal each number (memory only) and hash it under every salt version;
3. take the idempotency keys ``campaign:<id>:<seq>`` in one transaction (a multi-row insert
   that skips keys already taken; those are settled by the same rule as a single send,
   :func:`consentgate.delivery.sending.existing_claim`: a stale claim or an unavailable
   provider is taken over under the stored message id, so the provider de-duplicates; a
   stored answer is the recipient's answer; nothing is ever sent twice);
4. the consent gate, at send time, for the whole batch in one set-based read of the store
   (:meth:`ConsentGate.check_many`): a withdrawal acknowledged before it stops the send;
   from before that read until step 6 ends the batch holds its subjects' send fences
   (:mod:`consentgate.gate.fence`), so a withdrawal committed after the read is not
   acknowledged before these sends are over;
5. the provider's capability check for the batch (RBM ``users:batchGet``), the recipients'
   devices in one read, then the planner (pure) and the envelope per recipient;
6. the sends, concurrently over keep-alive connections (the outbox relay's
   :class:`~consentgate.outbox.sender.HttpSender`), each provider within its rate limit; a
   send not started before the lease runs out is handed back untried;
7. the outcomes, their ``message.decided`` outbox events and the recipients' states in one
   transaction of batched statements; numbers are purged as each recipient completes.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from contextlib import ExitStack
from datetime import timedelta
from typing import Any, NamedTuple

from sqlalchemy import Connection, Engine, select, update

from consentgate.crypto.keystore import KeyStore
from consentgate.delivery import bulk
from consentgate.delivery.fanout import Fanout
from consentgate.delivery.planner import (
    CapabilityReport,
    ConsentInForce,
    ConsentRefused,
    SendDecision,
    plan,
)
from consentgate.delivery.providers.base import (
    OutboundMessage,
    Provider,
    ProviderError,
    ProviderRejected,
    capabilities_many,
)
from consentgate.delivery.ratelimit import RateLimits
from consentgate.delivery.registry import Registry
from consentgate.delivery.revocation import Revoker
from consentgate.delivery.sealed import unseal_number
from consentgate.delivery.sending import (
    Claim,
    Composer,
    Outcome,
    existing_claim,
    request_hash,
)
from consentgate.delivery.settle import DONE_NO_MESSAGE, RECIPIENT_KEY, Recipient, Settler
from consentgate.delivery.templates import Template
from consentgate.domain.clock import Clock
from consentgate.domain.reasons import ReasonCode
from consentgate.domain.timeutil import to_micros
from consentgate.errors import ConsentGateError, NotFound, StoreUnavailable
from consentgate.gate.fence import SendFence
from consentgate.gate.gate import ConsentGate
from consentgate.observability.metrics import Metrics
from consentgate.outbox.sender import Sender
from consentgate.outbox.store import OutboxWriter
from consentgate.storage import lean
from consentgate.storage.engine import read_tx, write_tx
from consentgate.storage.tables import campaign_recipients, campaigns, messages, subject_links
from consentgate.tenants.service import TenantService

# --- one recipient through a pass ----------------------------------------------------------------

log = logging.getLogger("consentgate.dispatch")

_ANY_DUE = (
    "SELECT 1 FROM campaign_recipients WHERE state IN ('queued', 'claimed') "
    "AND due_us <= :now LIMIT 1"
)
_KEY_COLUMNS = (
    "id",
    "tenant_id",
    "idempotency_key",
    "request_hash",
    "consent_type",
    "template_id",
    "campaign_id",
    "action",
    "status",
    "created_us",
    "updated_us",
)
_HELD = (
    "SELECT id, idempotency_key, request_hash, status, updated_us, action, mode, reason, "
    "device_kid, consent_seq FROM messages WHERE tenant_id = :tenant AND idempotency_key IN "
)


class _Held(NamedTuple):
    """A message row under one of the batch's idempotency keys."""

    id: str
    idempotency_key: str
    request_hash: bytes
    status: str
    updated_us: int
    action: str
    mode: str | None
    reason: str | None
    device_kid: str | None
    consent_seq: int | None


class Dispatcher:
    def __init__(
        self,
        engine: Engine,
        tenants: TenantService,
        gate: ConsentGate,
        registry: Registry,
        composer: Composer,
        keystore: KeyStore,
        clock: Clock,
        sender: Sender | None,
        limits: RateLimits,
        *,
        lease: timedelta,
        stale_claim: timedelta,
        concurrency: int = 32,
        metrics: Metrics | None = None,
        outbox: OutboxWriter | None = None,
        revoker: Revoker | None = None,
        fence: SendFence | None = None,
    ) -> None:
        self.revoker = revoker
        self._fence = fence or SendFence(engine)
        self._engine = engine
        self._tenants = tenants
        self._gate = gate
        self._registry = registry
        self._composer = composer
        self._keys = keystore
        self._clock = clock
        self._sender = sender
        self._limits = limits
        self._lease = lease
        self._lease_us = int(lease.total_seconds() * 1_000_000)
        self._stale_us = int(stale_claim.total_seconds() * 1_000_000)
        self._metrics = metrics or Metrics()
        self._outbox = outbox
        self._fanout = Fanout(sender, limits, concurrency)
        self._settler = Settler(engine, gate, clock, self._metrics, outbox)

    def close(self) -> None:
        self._fanout.close()

    def _now_us(self) -> int:
        return to_micros(self._clock.now())

    # -- the pass ----------------------------------------------------------------------------

    def dispatch_once(self, limit: int, cancel: threading.Event | None = None) -> int:
        """Claim and work up to ``limit`` due recipients, then the revoker's pass; return how
        many recipients and revocations were handled."""
        rcs_rate = self._limits.rate(self._composer.providers.rcs.name)
        if rcs_rate is not None:  # a batch the provider can take before its consent goes stale
            limit = min(limit, max(10, int(rcs_rate)))
        claimed = self._claim(limit) if limit > 0 else []
        groups: dict[tuple[str, str], list[Recipient]] = {}
        for row in claimed:  # the attempt number as stored by this claim
            key = f"campaign:{row.campaign_id}:{row.seq}"
            groups.setdefault((row.tenant_id, row.campaign_id), []).append(
                Recipient(row, row.attempts + 1, key=key)
            )
        for (tenant, _), items in groups.items():
            self._work(tenant, items, cancel)
        self._settler.close_finished({row.campaign_id for row in claimed})
        revoked = self.revoker.run_once(paced=True) if self.revoker is not None else 0
        return len(claimed) + revoked

    def _claim(self, limit: int) -> list[Any]:
        now = self._now_us()
        lease = now + self._lease_us
        # An idle pass asks in a plain read; the write lock only when something is due.
        with read_tx(self._engine) as conn:
            if not lean.rows(conn, _ANY_DUE, {"now": now}):
                return []
        with write_tx(self._engine) as conn:
            due = (
                select(campaign_recipients, campaigns.c.template_id, campaigns.c.consent_type)
                .join(campaigns, campaigns.c.id == campaign_recipients.c.campaign_id)
                .where(
                    campaign_recipients.c.state.in_(["queued", "claimed"]),
                    campaign_recipients.c.due_us <= now,
                )
                .order_by(campaign_recipients.c.due_us)
                .limit(limit)
            )
            if conn.dialect.name == "postgresql":
                due = due.with_for_update(skip_locked=True, of=campaign_recipients)
            rows = conn.execute(due).all()
            if not rows:
                return []
            bulk.update_rows(
                conn,
                "campaign_recipients",
                RECIPIENT_KEY,
                {"due_us": "bigint", "attempts": "integer"},
                [
                    {
                        "campaign_id": r.campaign_id,
                        "seq": r.seq,
                        "attempts": r.attempts + 1,
                        "due_us": lease,
                    }
                    for r in rows
                ],
                fixed="state = 'claimed'",
            )
            for campaign_id in {r.campaign_id for r in rows}:
                conn.execute(
                    update(campaigns)
                    .where(campaigns.c.id == campaign_id, campaigns.c.status == "queued")
                    .values(status="running", updated_us=now)
                )
        return list(rows)

    def _work(self, tenant: str, items: list[Recipient], cancel: threading.Event | None) -> None:
        first = items[0].row
        template = self._template(tenant, first.template_id, first.consent_type)
        live: list[Recipient] = []
        for item in items:
            if template is not None and self._unseal(tenant, item):
                live.append(item)
            else:  # not sendable as stored: record and purge
                item.values = dict(DONE_NO_MESSAGE)
        if template is not None and live:
            self._hash(tenant, live)
            live = self._take_keys(tenant, live, template)
            self._resolve(tenant, live)
            refs = [i.ref for i in live if i.ref is not None]
            with ExitStack() as fenced:
                try:  # from before the consent read until the last send (gate.fence)
                    fenced.enter_context(self._fence.sending(tenant, refs, first.consent_type))
                except StoreUnavailable:
                    for item in live:  # fail closed, as when the check cannot read
                        item.consent = ConsentRefused(ReasonCode.STORE_UNAVAILABLE)
                else:
                    self._check_consent(tenant, live, first.consent_type)
                self._plan_and_send(tenant, live, template, cancel)
        self._settler.record(tenant, items)

    def _template(self, tenant: str, template_id: str, consent_type: str) -> Template | None:
        """The campaign's template, or None when it cannot be sent as stored (removed, its
        purpose gone, or tokens nothing fills): its recipients are then settled, not retried."""
        try:
            if consent_type not in self._tenants.catalogue(tenant):
                return None
            template = self._registry.template(tenant, template_id)
            self._composer.content(template, {})
        except (NotFound, ConsentGateError, ValueError):
            return None
        return template

    def _unseal(self, tenant: str, item: Recipient) -> bool:
        r = item.row
        if r.sealed is None or r.wrapped_key is None or r.hashed_id is None:
            return False
        try:
            context = f"{r.campaign_id}:{r.seq}"
            item.e164 = unseal_number(self._keys, tenant, context, r.sealed, r.wrapped_key)
        except (ConsentGateError, ValueError):
            return False
        return True

    def _hash(self, tenant: str, items: list[Recipient]) -> None:
        numbers = [i.e164.encode() for i in items]
        for version in self._keys.salt_versions(tenant):
            digests = self._keys.keyed_hash_many(tenant, version, numbers)
            for item, digest in zip(items, digests, strict=True):
                item.hashes[version] = digest.hex()

    # -- idempotency -------------------------------------------------------------------------

    def _take_keys(
        self, tenant: str, items: list[Recipient], template: Template
    ) -> list[Recipient]:
        """Claim every recipient's idempotency key in one transaction; return the items this
        pass sends (the others have their answer, or wait for the worker that holds them)."""
        now = self._now_us()
        consent_type = items[0].row.consent_type
        wanted = {
            i.key: request_hash(i.current, consent_type, template.template_id, {}) for i in items
        }
        mine = {i.key: str(uuid.uuid4()) for i in items}
        rows = [
            {
                "id": mine[i.key],
                "tenant_id": tenant,
                "idempotency_key": i.key,
                "request_hash": wanted[i.key],
                "consent_type": consent_type,
                "template_id": template.template_id,
                "campaign_id": i.row.campaign_id,
                "action": "pending",
                "status": "pending",
                "created_us": now,
                "updated_us": now,
            }
            for i in items
        ]
        sending: list[Recipient] = []
        with write_tx(self._engine) as conn:
            bulk.insert_rows(conn, "messages", _KEY_COLUMNS, rows, skip_conflicts=True)
            stored: dict[str, _Held] = {}
            keys = list(mine)
            for start in range(0, len(keys), 900):
                params: dict[str, Any] = {"tenant": tenant}
                names = lean.placeholders("k", keys[start : start + 900], params)
                sql = _HELD + f"({names})"
                for found in lean.rows(conn, sql, params):
                    held = _Held(*found)
                    stored[held.idempotency_key] = held
            for item in items:
                row = stored[item.key]
                if row.id == mine[item.key]:
                    item.message_id = row.id
                    sending.append(item)
                    continue
                verdict = existing_claim(row, wanted[item.key], now, self._stale_us, True)
                if verdict is Claim.TAKE_OVER and self._take_over(conn, row, now):
                    item.message_id = row.id
                    sending.append(item)
                elif verdict is Claim.MISMATCH:
                    item.values = dict(DONE_NO_MESSAGE)
                elif row.status == "pending":  # another worker is sending it: come back later
                    item.values = {"state": "queued", "due_us": now + self._stale_us}
                else:
                    item.answer = row
        return sending

    @staticmethod
    def _take_over(conn: Connection, row: Any, now: int) -> bool:
        taken = conn.execute(
            update(messages)
            .where(
                messages.c.id == row.id,
                messages.c.status == row.status,
                messages.c.updated_us == row.updated_us,
            )
            .values(status="pending", updated_us=now)
        ).rowcount
        return taken == 1

    # -- consent, plan, send -----------------------------------------------------------------

    def _resolve(self, tenant: str, items: list[Recipient]) -> None:
        """Each recipient's subject, by its hashed ids, in one read."""
        hashes = sorted({h for i in items for h in i.hashes.values()})
        refs: dict[str, str] = {}
        with read_tx(self._engine) as conn:
            for start in range(0, len(hashes), 900):
                for hashed_id, ref in conn.execute(
                    select(subject_links.c.hashed_id, subject_links.c.subject_ref).where(
                        subject_links.c.tenant_id == tenant,
                        subject_links.c.hashed_id.in_(hashes[start : start + 900]),
                    )
                ):
                    refs[hashed_id] = ref
        for item in items:
            known = {refs[h] for h in item.hashes.values() if h in refs}
            if len(known) == 1:
                item.ref = known.pop()
            elif known:
                item.consent = ConsentRefused(ReasonCode.AMBIGUOUS)

    def _check_consent(self, tenant: str, items: list[Recipient], consent_type: str) -> None:
        """The gate for every resolved recipient in one read."""
        verdicts = self._gate.check_many(
            tenant, [i.ref for i in items if i.ref is not None], consent_type
        )
        for item in items:
            if item.ref is None:
                continue
            verdict = verdicts[item.ref]
            if verdict.allowed and verdict.consent_seq is not None:
                item.consent = ConsentInForce(verdict.consent_seq)
            elif verdict.reason is not None:
                item.consent = ConsentRefused(verdict.reason)

    def _plan_and_send(
        self,
        tenant: str,
        items: list[Recipient],
        template: Template,
        cancel: threading.Event | None,
    ) -> None:
        now = self._clock.now()
        allowed = [i for i in items if isinstance(i.consent, ConsentInForce)]
        for item in items:
            if isinstance(item.consent, ConsentRefused):
                decision = plan(
                    item.consent,
                    sensitive=template.sensitive,
                    capabilities=CapabilityReport.unavailable(),
                    device=None,
                    now=now,
                )
                item.outcome = self._outcome(item, decision, None, None, "skipped", None)
        if not allowed:
            return
        rcs = self._composer.providers.rcs
        try:
            caps = capabilities_many(rcs, [i.e164 for i in allowed])
            reports = {p: CapabilityReport(c.rcs, c.native_e2ee) for p, c in caps.items()}
        except ProviderError:
            reports = {}
        devices = self._registry.devices_for(tenant, [str(i.ref) for i in allowed])
        outbound: list[tuple[Recipient, SendDecision, OutboundMessage, Provider]] = []
        content = self._composer.content(template, {})
        for item in allowed:
            report = reports.get(item.e164, CapabilityReport.unavailable())
            record = devices.get(str(item.ref))
            try:
                decision = plan(
                    item.consent,
                    sensitive=template.sensitive,
                    capabilities=report,
                    device=None if record is None else record.device,
                    now=now,
                )
                message, provider = self._composer.outbound(
                    tenant,
                    str(item.message_id),
                    item.e164,
                    template,
                    {},
                    decision,
                    None if record is None else record.public_key,
                    report,
                    int(now.timestamp()),
                    content,
                )
            except (ConsentGateError, ValueError, RuntimeError) as exc:
                # Not sendable as stored (a device key the envelope cannot use, say): settled
                # like a removed template, its claim released, never retried for ever.
                log.warning("dispatch: a recipient could not be composed (%s)", type(exc).__name__)
                item.values, item.released = dict(DONE_NO_MESSAGE), True
                continue
            outbound.append((item, decision, message, provider))
        deadline = time.monotonic() + self._lease.total_seconds() * 0.75
        answers = self._fanout.send_all([(m, p) for _, _, m, p in outbound], deadline, cancel)
        for (item, decision, _, provider), answer in zip(outbound, answers, strict=True):
            if answer is None:
                item.released = True  # never left this process: hand the claim back
            elif isinstance(answer, ProviderError):
                reason = (
                    ReasonCode.PROVIDER_REJECTED
                    if isinstance(answer, ProviderRejected)
                    else ReasonCode.PROVIDER_UNAVAILABLE
                )
                item.outcome = self._outcome(item, decision, provider.name, None, "failed", reason)
            else:
                pmid = answer.provider_message_id
                item.outcome = self._outcome(item, decision, provider.name, pmid, "sent", None)

    def _outcome(
        self,
        item: Recipient,
        decision: SendDecision,
        provider: str | None,
        provider_message_id: str | None,
        status: str,
        failure: ReasonCode | None,
    ) -> Outcome:
        return Outcome(
            str(item.message_id),
            item.ref,
            item.current,
            decision,
            provider,
            provider_message_id,
            status,
            failure,
        )


__all__ = ["Dispatcher"]
