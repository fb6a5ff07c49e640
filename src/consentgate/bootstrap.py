"""Composition root: build every part from settings, once, and hand the bundle around."""

from __future__ import annotations

import os
import secrets
from collections.abc import Collection
from dataclasses import dataclass
from datetime import timedelta

import httpx
from sqlalchemy import Engine

from consentgate.analytics import attribution
from consentgate.analytics.service import AnalyticsService
from consentgate.audit import AuditService, ExportService
from consentgate.cmp import generic, mapped
from consentgate.config import Settings, load_settings
from consentgate.consent.cmp_settings import CmpSettings
from consentgate.consent.cmp_webhooks import CmpWebhookService
from consentgate.consent.group_commit import GroupCommitter
from consentgate.consent.ingest import IngestService
from consentgate.consent.queries import ConsentQueries
from consentgate.consent.receipts import ReceiptService
from consentgate.consent.single import SingleEventIngest
from consentgate.consent.subjects import SubjectLinks
from consentgate.crypto.keystore import KeyStore, LocalKeyStore
from consentgate.delivery.campaigns import CampaignService
from consentgate.delivery.dispatch import Dispatcher
from consentgate.delivery.messages import MessageService, Providers
from consentgate.delivery.providers.push import PushProvider
from consentgate.delivery.providers.rbm import RbmProvider
from consentgate.delivery.providers.sms import SmsProvider
from consentgate.delivery.ratelimit import RateLimits
from consentgate.delivery.registry import Registry
from consentgate.delivery.revocation import Revoker
from consentgate.delivery.worker import DispatchWorker
from consentgate.domain.clock import Clock, SystemClock
from consentgate.gate import cache as state_cache
from consentgate.gate.fence import SendFence
from consentgate.gate.gate import ConsentGate
from consentgate.gate.notify import InvalidationListener, libpq_dsn
from consentgate.ledger.signer import CheckpointSigner, CheckpointWorker
from consentgate.ledger.store import LedgerStore
from consentgate.observability.metrics import Metrics
from consentgate.observability.store import StoreCollector
from consentgate.outbox import store as outbox_store
from consentgate.outbox.deliveries import DeliveryService
from consentgate.outbox.endpoints import EndpointService
from consentgate.outbox.relay import Relay, RelayWorker
from consentgate.outbox.sender import HttpSender
from consentgate.privacy.erasure import ErasureService
from consentgate.privacy.retention import RetentionService
from consentgate.privacy.scrub import StorageScrubber
from consentgate.storage.engine import build_engine, migrate
from consentgate.tenants.service import TenantService


@dataclass(frozen=True)
class App:
    settings: Settings
    engine: Engine
    clock: Clock
    keystore: KeyStore
    ledger: LedgerStore
    tenants: TenantService
    links: SubjectLinks
    ingest: IngestService
    committer: GroupCommitter
    queries: ConsentQueries
    cmp_settings: CmpSettings
    cmp_webhooks: CmpWebhookService
    receipts: ReceiptService
    audit: AuditService
    exports: ExportService
    gate: ConsentGate
    registry: Registry
    messages: MessageService
    campaigns: CampaignService
    sandbox_secrets: dict[str, str]
    metrics: Metrics
    analytics: AnalyticsService
    erasure: ErasureService
    retention: RetentionService
    outbox: outbox_store.OutboxWriter
    endpoints: EndpointService
    deliveries: DeliveryService
    single_ingest: SingleEventIngest
    _listener: InvalidationListener | None = None
    _worker: DispatchWorker | None = None
    _relay: RelayWorker | None = None
    _checkpointer: CheckpointWorker | None = None
    _fence: SendFence | None = None

    def start_background(
        self,
        *,
        workers: bool = True,
        kinds: Collection[str] = ("dispatch", "relay", "checkpoint"),
    ) -> None:
        """What a long-running process needs beyond requests: on PostgreSQL, the listener
        that evicts this process's consent cache when another process changes consent; and,
        unless ``workers`` is False, the workers named in ``kinds``: the dispatch worker
        (campaign queue), the relay (outbox → CRM/CMP webhooks) and the checkpoint worker
        (signs moved ledger heads, makes month partitions ahead)."""
        if self.engine.dialect.name == "postgresql" and self._listener is None:
            listener = InvalidationListener(
                libpq_dsn(self.engine), self.gate.cache, metrics=self.metrics
            )
            object.__setattr__(self, "_listener", listener)
            listener.start()
        if workers and "dispatch" in kinds and self._worker is None:
            worker = DispatchWorker(self.campaigns, threads=self.settings.dispatch.threads)
            object.__setattr__(self, "_worker", worker)
            worker.start()
        if workers and "relay" in kinds and self._relay is None:
            relay = self.relay_worker()
            object.__setattr__(self, "_relay", relay)
            relay.start()
        if workers and "checkpoint" in kinds and self._checkpointer is None:
            checkpointer = CheckpointWorker(
                CheckpointSigner(self.engine, self.ledger, self.clock),
                self.settings.consent.checkpoint_interval_seconds,
            )
            object.__setattr__(self, "_checkpointer", checkpointer)
            checkpointer.start()

    def relay_worker(self) -> RelayWorker:
        """A relay worker (not started) with its own HTTP sender."""
        hooks = self.settings.webhooks
        sender = HttpSender(hooks.concurrency, hooks.timeout_seconds)
        relay = Relay(self.engine, self.endpoints, self.clock, hooks, sender, metrics=self.metrics)
        return RelayWorker(relay, sender, hooks.poll_seconds)

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
        if self._relay is not None:
            self._relay.stop()
        if self._worker is not None:
            self._worker.stop()
        if self._listener is not None:
            self._listener.stop()
        self.cmp_webhooks.close()  # answers the webhooks still queued, then its thread ends
        self.single_ingest.close()
        if self._fence is not None:
            self._fence.close()
        self.engine.dispose()


def build(
    settings: Settings | None = None,
    *,
    clock: Clock | None = None,
    keystore: KeyStore | None = None,
    run_migrations: bool = True,
) -> App:
    settings = settings or load_settings()
    clock = clock or SystemClock()
    engine = build_engine(settings.storage)
    metrics = Metrics()
    metrics.add_collector(StoreCollector(engine, clock))
    if run_migrations:
        migrate(engine)
    keystore = keystore or LocalKeyStore(settings.keys.key_dir, settings.keys.master_key)
    ledger = LedgerStore(
        keystore,
        settings.consent.log_origin_prefix,
        sign_on_commit=settings.consent.checkpoint_on_commit,
    )
    tenants = TenantService(engine, keystore, ledger, clock)
    metrics.bind_names(tenants.exists, lambda tenant, purpose: purpose in tenants.catalogue(tenant))
    links = SubjectLinks(keystore)
    cmp_settings = CmpSettings(engine, tenants, clock)
    outbox = outbox_store.OutboxWriter()
    ingest = IngestService(
        engine,
        tenants,
        links,
        ledger,
        clock,
        timedelta(seconds=settings.consent.future_skew_seconds),
        receipt_policy=cmp_settings.receipt_policy,
        metrics=metrics,
        outbox=outbox,
    )
    committer = GroupCommitter(ingest)
    cache = state_cache.for_store(
        settings.consent.gate_cache_seconds, engine.url, settings.storage.data_dir
    )
    gate = ConsentGate(engine, clock, cache, metrics=metrics)
    ingest.add_listener(gate.on_changes)
    fence = SendFence(engine)
    ingest.add_withdrawal_listener(fence.wait_for_sends)
    registry = Registry(engine, links, ledger, clock)
    providers, sandbox_secrets = _providers(settings, clock)
    messages = MessageService(
        engine,
        tenants,
        links,
        gate,
        registry,
        keystore,
        providers,
        clock,
        settings.consent.public_url,
        timedelta(seconds=settings.consent.dispatch_lease_seconds),
        metrics=metrics,
        outbox=outbox,
        fence=fence,
    )
    adapters = {
        "generic": lambda _tenant, payload: generic.to_events(payload),
        "tcf": lambda tenant, payload: (
            mapped.tcf_events(payload, cmp_settings.tcf_mapping(tenant)),
            True,
        ),
        "gpp": lambda tenant, payload: (
            mapped.gpp_events(
                payload, cmp_settings.tcf_mapping(tenant), cmp_settings.gpp_mapping(tenant)
            ),
            True,
        ),
    }
    receipts = ReceiptService(
        engine, tenants, links, ledger, keystore, clock, settings.consent.public_url
    )
    scrubber = StorageScrubber(engine)
    erasure = ErasureService(
        engine,
        tenants,
        links,
        ledger,
        gate,
        keystore,
        clock,
        scrubber,
        outbox=outbox_store.erase_subject,
        notify=outbox.subject_erased,
        join_tokens=attribution.join_tokens,
        fence=fence,
    )
    return App(
        settings=settings,
        engine=engine,
        erasure=erasure,
        retention=RetentionService(engine, tenants, clock, scrubber),
        clock=clock,
        keystore=keystore,
        ledger=ledger,
        tenants=tenants,
        links=links,
        ingest=ingest,
        committer=committer,
        single_ingest=SingleEventIngest(ingest, committer, settings.consent.ingest_linger_seconds),
        queries=ConsentQueries(engine, tenants, links, clock),
        cmp_settings=cmp_settings,
        cmp_webhooks=CmpWebhookService(
            engine,
            tenants,
            keystore,
            ingest,
            committer,
            clock,
            adapters,
            settings.consent.ingest_linger_seconds,
        ),
        gate=gate,
        registry=registry,
        messages=messages,
        campaigns=CampaignService(
            engine,
            tenants,
            links,
            gate,
            registry,
            Dispatcher(
                engine,
                tenants,
                gate,
                registry,
                messages.composer,
                keystore,
                clock,
                HttpSender(settings.dispatch.concurrency, 5.0),
                RateLimits(settings.dispatch.provider_rates),
                lease=timedelta(seconds=settings.consent.dispatch_lease_seconds),
                stale_claim=timedelta(seconds=settings.consent.dispatch_lease_seconds),
                concurrency=settings.dispatch.concurrency,
                metrics=metrics,
                outbox=outbox,
                revoker=Revoker(
                    engine, keystore, [providers.rcs, providers.sms, providers.push], clock
                ),
                fence=fence,
            ),
            keystore,
            clock,
            settings.dispatch.batch,
            metrics=metrics,
        ),
        sandbox_secrets=sandbox_secrets,
        metrics=metrics,
        analytics=AnalyticsService(engine, tenants, keystore, clock),
        outbox=outbox,
        endpoints=EndpointService(engine, keystore, clock),
        deliveries=DeliveryService(engine, clock),
        _fence=fence,
        receipts=receipts,
        audit=AuditService(engine, tenants),
        exports=ExportService(
            engine,
            tenants,
            links,
            ledger,
            receipts,
            keystore,
            clock,
            timedelta(seconds=settings.consent.future_skew_seconds),
        ),
    )


def _providers(settings: Settings, clock: Clock) -> tuple[Providers, dict[str, str]]:
    """The providers: the sandbox carrier unless configured otherwise. Its credentials are
    random per process unless given (a worker process must share them with the server)."""
    base = settings.consent.sandbox_url or f"{settings.consent.public_url}/sandbox"
    env = os.environ
    secrets_ = {
        "rbm": env.get("CONSENTGATE_SANDBOX_RBM_TOKEN") or secrets.token_urlsafe(24),
        "twilio": env.get("CONSENTGATE_SANDBOX_TWILIO_TOKEN") or secrets.token_urlsafe(24),
    }
    http = httpx.Client(timeout=httpx.Timeout(5.0, connect=2.0))
    callbacks = f"{settings.consent.public_url}/v1/providers"
    return (
        Providers(
            rcs=RbmProvider(
                http,
                base_url=f"{base}/rbm",
                client_token=secrets_["rbm"],
                access_token=env.get("CONSENTGATE_RBM_ACCESS_TOKEN") or secrets.token_urlsafe(16),
                agent_id="consentgate",
                carry_envelope=True,
                clock=clock,
            ),
            sms=SmsProvider(
                http,
                base_url=f"{base}/twilio",
                account_sid="ACsandbox",
                auth_token=secrets_["twilio"],
                from_number="+15005550006",
                status_callback=f"{callbacks}/sms/callbacks",
                callback_url=f"{callbacks}/sms/callbacks",
                clock=clock,
            ),
            push=PushProvider(http, base_url=f"{base}/push"),
        ),
        secrets_,
    )
