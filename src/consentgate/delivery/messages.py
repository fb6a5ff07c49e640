"""One message, end to end: idempotency, the consent gate, the plan, the envelope, the send.

The raw number lives only in this call's memory (for the provider); the stored decision
names the subject by ``subject_ref`` and records its mode, reason, device key id and the
ledger ``seq`` of the consent leaf that allowed it. A row is claimed under the idempotency key
*before* anything is sent, so a retried or concurrent request never sends twice.
"""

from __future__ import annotations

import uuid
from contextlib import ExitStack
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from consentgate.consent.subjects import HashedIdentifier, SubjectLinks
from consentgate.crypto.keystore import KeyStore
from consentgate.delivery.planner import (
    CapabilityReport,
    ConsentCheck,
    ConsentInForce,
    ConsentRefused,
    SendDecision,
    plan,
)
from consentgate.delivery.providers.base import ProviderError, ProviderRejected
from consentgate.delivery.registry import Registry
from consentgate.delivery.revocation import REVOCABLE, hold, revoke_if_withdrawn
from consentgate.delivery.sealed import seal_number
from consentgate.delivery.sending import (
    Claim,
    Composer,
    Outcome,
    Providers,
    count_decisions,
    existing_claim,
    record_outcomes,
    request_hash,
    response,
)
from consentgate.delivery.templates import Template
from consentgate.domain.clock import Clock
from consentgate.domain.identity import Identifier
from consentgate.domain.reasons import ReasonCode
from consentgate.domain.timeutil import to_micros
from consentgate.errors import Conflict, InvalidInput, NotFound, StoreUnavailable
from consentgate.gate.fence import SendFence
from consentgate.gate.gate import ConsentGate, GateDecision
from consentgate.observability.metrics import Metrics
from consentgate.outbox.store import OutboxWriter
from consentgate.storage.engine import read_tx, write_tx
from consentgate.storage.tables import messages
from consentgate.tenants.service import TenantService

__all__ = ["MessageService", "Providers"]


class MessageService:
    def __init__(
        self,
        engine: Engine,
        tenants: TenantService,
        links: SubjectLinks,
        gate: ConsentGate,
        registry: Registry,
        keystore: KeyStore,
        providers: Providers,
        clock: Clock,
        public_url: str,
        stale_claim: timedelta = timedelta(seconds=60),
        metrics: Metrics | None = None,
        outbox: OutboxWriter | None = None,
        fence: SendFence | None = None,
    ) -> None:
        self._metrics = metrics or Metrics()
        self._outbox = outbox
        self._fence = fence or SendFence(engine)
        # A pending claim this old belongs to a worker that died.
        self._stale_claim_us = int(stale_claim.total_seconds() * 1_000_000)
        self._engine = engine
        self._tenants = tenants
        self._links = links
        self._gate = gate
        self._registry = registry
        self._keys = keystore
        self._providers = providers
        self._clock = clock
        self.composer = Composer(keystore, providers, public_url)

    @property
    def providers(self) -> Providers:
        """The providers messages go out through (read-only; callbacks come back to them)."""
        return self._providers

    def send(
        self,
        tenant: str,
        to: Identifier,
        consent_type: str,
        template_id: str,
        variables: dict[str, Any],
        idempotency_key: str,
        *,
        campaign_id: str | None = None,
        retry_unavailable: bool = False,
    ) -> dict[str, Any]:
        """Decide and send one message. ``retry_unavailable``: a message that failed only
        because the provider was unavailable is tried again (same message id, so the
        provider de-duplicates); otherwise the stored answer is returned."""
        if consent_type not in self._tenants.catalogue(tenant):
            raise InvalidInput("unknown consent_type", field="consent_type")
        try:
            template = self._registry.template(tenant, template_id)
        except NotFound:
            raise InvalidInput("template_id names no template", field="template_id") from None
        hashed = self._links.hash_identifier(tenant, to)
        wanted = request_hash(hashed.current, consent_type, template_id, variables)
        now_us = to_micros(self._clock.now())
        message_id, existing = self._claim(
            tenant,
            idempotency_key,
            wanted,
            consent_type,
            template_id,
            campaign_id,
            now_us,
            retry_unavailable,
        )
        if existing is not None:
            return existing
        handed_over: list[bool] = []  # set once the provider has been called
        try:
            with ExitStack() as fenced:  # held until the decision is stored
                return self._decide_and_send(
                    fenced,
                    tenant,
                    message_id,
                    to,
                    hashed,
                    consent_type,
                    template,
                    variables,
                    handed_over,
                    campaign_id,
                )
        except BaseException:
            if handed_over:
                raise  # the provider may have it: keep the claim (taken over once stale)
            # Nothing left this process: release the idempotency key so the caller can retry.
            with write_tx(self._engine) as conn:
                conn.execute(
                    delete(messages).where(
                        messages.c.id == message_id, messages.c.status == "pending"
                    )
                )
            raise

    def _decide_and_send(
        self,
        fenced: ExitStack,
        tenant: str,
        message_id: str,
        to: Identifier,
        hashed: HashedIdentifier,
        consent_type: str,
        template: Template,
        variables: dict[str, Any],
        handed_over: list[bool],
        campaign_id: str | None,
    ) -> dict[str, Any]:
        with read_tx(self._engine) as conn:
            found = self._links.find(conn, tenant, hashed)
        ref = None if found is None else found[0]
        consent: ConsentCheck = ConsentRefused(ReasonCode.NO_CONSENT)
        if ref is None:  # no subject, no consent: the gate's answer without a lookup
            self._metrics.gate_checked(tenant, ReasonCode.NO_CONSENT, from_cache=None)
        else:
            try:  # the subject's send fence, from before the check to after the send
                fenced.enter_context(self._fence.sending(tenant, [ref], consent_type))
            except StoreUnavailable:  # fail closed, as the check itself would
                verdict = GateDecision(False, ReasonCode.STORE_UNAVAILABLE, None)
            else:
                verdict = self._gate.check(tenant, ref, consent_type)
            if verdict.allowed and verdict.consent_seq is not None:
                consent = ConsentInForce(verdict.consent_seq)
            elif verdict.reason is not None:
                consent = ConsentRefused(verdict.reason)
        if isinstance(consent, ConsentRefused):
            decision = plan(
                consent,
                sensitive=template.sensitive,
                capabilities=CapabilityReport.unavailable(),
                device=None,
                now=self._clock.now(),
            )
            return self._finish(
                tenant,
                message_id,
                ref,
                hashed.current,
                decision,
                None,
                None,
                "skipped",
                None,
                consent_type=consent_type,
                campaign_id=campaign_id,
            )
        try:
            caps = self._providers.rcs.capabilities(to.value)
            report = CapabilityReport(caps.rcs, caps.native_e2ee)
        except ProviderError:
            report = CapabilityReport.unavailable()
        record = self._registry.device_for(tenant, ref) if ref is not None else None
        now = self._clock.now()
        decision = plan(
            consent,
            sensitive=template.sensitive,
            capabilities=report,
            device=None if record is None else record.device,
            now=now,
        )
        outbound, provider = self.composer.outbound(
            tenant,
            message_id,
            to.value,
            template,
            variables,
            decision,
            None if record is None else record.public_key,
            report,
            int(now.timestamp()),
        )
        handed_over.append(True)
        try:
            receipt = provider.send(outbound)
        except ProviderError as exc:
            reason = (
                ReasonCode.PROVIDER_REJECTED
                if isinstance(exc, ProviderRejected)
                else ReasonCode.PROVIDER_UNAVAILABLE
            )
            return self._finish(
                tenant,
                message_id,
                ref,
                hashed.current,
                decision,
                provider.name,
                None,
                "failed",
                reason,
                consent_type=consent_type,
                campaign_id=campaign_id,
            )
        held = None
        if provider.name in REVOCABLE and ref is not None:
            # Kept sealed until delivered: a withdrawal may still revoke it (delivery/revocation).
            sealed, wrapped = seal_number(self._keys, tenant, message_id, to.value)
            held = (
                message_id,
                ref,
                consent_type,
                provider.name,
                receipt.provider_message_id,
                message_id,
                sealed,
                wrapped,
            )
        answer = self._finish(
            tenant,
            message_id,
            ref,
            hashed.current,
            decision,
            provider.name,
            receipt.provider_message_id,
            "sent",
            None,
            consent_type=consent_type,
            campaign_id=campaign_id,
            held=held,
        )
        if held is not None and ref is not None:
            now_us = to_micros(self._clock.now())
            revoke_if_withdrawn(
                self._engine, self._gate, tenant, consent_type, [(message_id, ref)], now_us
            )
        return answer

    def _claim(
        self,
        tenant: str,
        key: str,
        request_hash: bytes,
        consent_type: str,
        template_id: str,
        campaign_id: str | None,
        now_us: int,
        retry_unavailable: bool,
    ) -> tuple[str, dict[str, Any] | None]:
        """Take the idempotency key: (message_id to send under, None), or (id, the answer
        already given). A claim left pending by a crashed worker is taken over after
        the stale-claim time; the same message id is reused, so the provider de-duplicates."""
        message_id = str(uuid.uuid4())
        try:
            with write_tx(self._engine) as conn:
                conn.execute(
                    insert(messages).values(
                        id=message_id,
                        tenant_id=tenant,
                        idempotency_key=key,
                        request_hash=request_hash,
                        consent_type=consent_type,
                        template_id=template_id,
                        campaign_id=campaign_id,
                        action="pending",
                        status="pending",
                        created_us=now_us,
                        updated_us=now_us,
                    )
                )
            return message_id, None
        except IntegrityError:
            pass
        with read_tx(self._engine) as conn:
            row = conn.execute(
                select(messages).where(
                    messages.c.tenant_id == tenant, messages.c.idempotency_key == key
                )
            ).one()
        verdict = existing_claim(row, request_hash, now_us, self._stale_claim_us, retry_unavailable)
        if verdict is Claim.MISMATCH:
            raise Conflict("idempotency_key was used for another message", field="idempotency_key")
        if verdict is Claim.TAKE_OVER:
            with write_tx(self._engine) as conn:
                taken = conn.execute(
                    update(messages)
                    .where(
                        messages.c.id == row.id,
                        messages.c.status == row.status,
                        messages.c.updated_us == row.updated_us,
                    )
                    .values(status="pending", updated_us=now_us)
                ).rowcount
            if taken == 1:
                return str(row.id), None
        if row.status == "pending":
            raise Conflict(
                "a message with this idempotency_key is being sent", field="idempotency_key"
            )
        return str(row.id), response(row)

    def _finish(
        self,
        tenant: str,
        message_id: str,
        ref: str | None,
        hashed_id: str,
        decision: SendDecision,
        provider: str | None,
        provider_message_id: str | None,
        status: str,
        failure: ReasonCode | None,
        *,
        consent_type: str,
        campaign_id: str | None,
        held: tuple[str, str, str, str, str, str, bytes, bytes] | None = None,
    ) -> dict[str, Any]:
        """Store the decision and, in the same transaction, its ``message.decided`` event
        (and, for a revocable send, the sealed number: ``held``)."""
        now_us = to_micros(self._clock.now())
        outcome = Outcome(
            message_id, ref, hashed_id, decision, provider, provider_message_id, status, failure
        )
        with write_tx(self._engine) as conn:
            (row,) = record_outcomes(
                conn,
                tenant,
                [outcome],
                self._outbox,
                now_us,
                consent_type=consent_type,
                campaign_id=campaign_id,
            )
            if held is not None:
                hold(conn, tenant, [held], now_us)
        count_decisions(self._metrics, tenant, [row])
        return response(row)
