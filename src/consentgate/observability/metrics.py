"""Prometheus metrics: what happened in this process (counters, histograms) on one registry per
:class:`~consentgate.bootstrap.App`.

Counters are incremented at the decision points, after the decision is committed: a consent
event is counted once it is in the ledger, a send once its decision row is written. They
count what *this* process did; Prometheus adds up the processes it scrapes. Whatever must be
right across processes (queue depths, webhook deliveries pending) is read from the database
at scrape time instead (:mod:`consentgate.observability.store`).

Labels never carry an identifier — no phone number, e-mail, hashed id, subject_ref, message
or consent id. Every label value passes a guard that maps it into a closed set (the enums of
:mod:`consentgate.domain`, the planner's modes, the HTTP methods) or, for tenant and purpose
names, checks it has the shape those names are created with; anything else is counted as
``other``. A value's absence is ``none``. Each distinct tuple of raw values is guarded once
and its child kept, so a hot-path increment is a dict lookup and a locked add.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client import values as prometheus_values
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from consentgate import __version__
from consentgate.delivery.planner import DeliveryMode, SendAction
from consentgate.domain.consent import ConsentStatus, Source
from consentgate.domain.reasons import ReasonCode
from consentgate.observability.logs import EMAIL, PHONE
from consentgate.outbox.events import EVENT_TYPES

NONE = "none"
OTHER = "other"
UNMATCHED = "<unmatched>"  # the route label of a request no route answered

# The closed sets label values are drawn from (besides tenant and purpose names).
REASONS = frozenset(r.value for r in ReasonCode) | {NONE}
MODES = frozenset(m.value for m in DeliveryMode) | {NONE}
ACTIONS = frozenset(a.value for a in SendAction)
STATUSES = frozenset(s.value for s in ConsentStatus)
SOURCES = frozenset(s.value for s in Source)
GATE_STAGES = frozenset({"check", "prefilter"})
GATE_RESULTS = frozenset({"allowed", "denied"})
CACHE_RESULTS = frozenset({"hit", "miss"})
PROVIDERS = frozenset({"rbm", "sms", "push"})
RECEIPT_KINDS = frozenset({"delivered", "read", "failed"})
RECEIPT_OUTCOMES = frozenset({"linked", "ignored"})
CAMPAIGN_OUTCOMES = frozenset({"queued", "skipped", "retried", "done"})
WEBHOOK_KINDS = frozenset({"crm", "cmp"})
WEBHOOK_OUTCOMES = frozenset({"delivered", "failed", "dead"})
WEBHOOK_EVENT_TYPES = frozenset(EVENT_TYPES)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# Tenant names and purpose names are created with these shapes (tenants/service.py).
_TENANT = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_PURPOSE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_ROUTE = re.compile(r"^/[A-Za-z0-9_./{}:-]{0,200}$|^<unmatched>$")
_STATUS_CODE = re.compile(r"^[1-5][0-9]{2}$")

Guard = Callable[[Any], str]


def closed(allowed: frozenset[str]) -> Guard:
    def guard(value: Any) -> str:
        if value is None:
            return NONE
        text = str(value)
        return text if text in allowed else OTHER

    return guard


def shaped(pattern: re.Pattern[str]) -> Guard:
    def guard(value: Any) -> str:
        if value is None:
            return NONE
        text = str(value)
        if not pattern.match(text) or PHONE.search(text) or EMAIL.search(text):
            return OTHER
        return text

    return guard


tenant_label = shaped(_TENANT)
purpose_label = shaped(_PURPOSE)
route_label = shaped(_ROUTE)


class _Unsure(Exception):
    """A guard could not decide now (the store did not answer): label ``other`` this once."""


Row = Callable[[tuple[Any, ...], list[str]], None]


class _Family:
    """A labelled metric whose children are looked up by raw label values, guarded once.
    ``row`` may rewrite labels that depend on each other (a purpose exists per tenant)."""

    def __init__(self, metric: Any, guards: tuple[Guard, ...], row: Row | None = None) -> None:
        self._metric = metric
        self._guards = guards
        self._row = row
        self._children: dict[tuple[Any, ...], Any] = {}

    def child(self, *values: Any) -> Any:
        found = self._children.get(values)
        if found is not None:
            return found
        try:
            labels = [guard(v) for guard, v in zip(self._guards, values, strict=True)]
            if self._row is not None:
                self._row(values, labels)
        except _Unsure:
            return self._metric.labels(*[OTHER] * len(self._guards))
        found = self._metric.labels(*labels)
        if len(self._children) < 10_000:  # the guards bound the series, not this cache
            self._children[values] = found
        return found


MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def share_across_processes(directory: Path) -> None:
    """Counters and histograms of this process, and of the processes it starts (they inherit
    the environment), are kept in files under ``directory`` (prometheus_client's
    multiprocess mode) and added up at scrape time: with ``serve --workers N`` a scrape
    reaches one of N processes, and must count what all of them did. Call before any
    :class:`Metrics` is built; ``directory`` is emptied first (a counter restarts with the
    server, as it does in one process)."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROC_ENV] = str(directory)
    # This process imported prometheus_client before the variable was set.
    prometheus_values.ValueClass = prometheus_values.MultiProcessValue()  # type: ignore[no-untyped-call]


class Metrics:
    """Every metric of one App, on its own registry (tests build many Apps per process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._tenant_known: Callable[[str], bool] | None = None
        self._purpose_known: Callable[[str, str], bool] | None = None
        tenant = self._tenant_label
        r = self.registry
        self._build = Info("consentgate_build", "The running consentgate version", registry=r)
        self._build.info({"version": __version__})
        self._collectors: list[Collector] = []
        self._shared: CollectorRegistry | None = None
        self._consent = _Family(
            Counter(
                "consentgate_consent_events",
                "Consent events newly recorded in the ledger (replays excluded)",
                ["tenant", "consent_type", "status", "source"],
                registry=r,
            ),
            (tenant, purpose_label, closed(STATUSES), closed(SOURCES)),
            self._purpose_row,
        )
        self._replays = _Family(
            Counter(
                "consentgate_consent_replays",
                "Consent events that were already recorded (an identical consent_id replay)",
                ["tenant"],
                registry=r,
            ),
            (tenant,),
        )
        self._gate = _Family(
            Counter(
                "consentgate_gate_decisions",
                "Consent gate answers: on-send checks and campaign pre-filter rows",
                ["tenant", "stage", "result", "reason"],
                registry=r,
            ),
            (tenant, closed(GATE_STAGES), closed(GATE_RESULTS), closed(REASONS)),
        )
        self._gate_cache = _Family(
            Counter(
                "consentgate_gate_cache_lookups",
                "On-send checks answered from this process's consent cache (hit) or the store",
                ["result"],
                registry=r,
            ),
            (closed(CACHE_RESULTS),),
        )
        self._sends = _Family(
            Counter(
                "consentgate_send_decisions",
                "Messages decided (single and campaign): action, delivery mode and reason",
                ["tenant", "action", "mode", "reason"],
                registry=r,
            ),
            (tenant, closed(ACTIONS), closed(MODES), closed(REASONS)),
        )
        self._fallbacks = _Family(
            Counter(
                "consentgate_fallbacks",
                "Messages sent in a fallback mode (secure link, redacted SMS), by reason",
                ["tenant", "mode", "reason"],
                registry=r,
            ),
            (tenant, closed(MODES), closed(REASONS)),
        )
        self._campaign = _Family(
            Counter(
                "consentgate_campaign_recipients",
                "Campaign recipients by outcome: queued or skipped by the pre-filter, "
                "retried after a provider outage, done by the dispatch worker",
                ["tenant", "outcome"],
                registry=r,
            ),
            (tenant, closed(CAMPAIGN_OUTCOMES)),
        )
        self._receipts = _Family(
            Counter(
                "consentgate_delivery_receipts",
                "Provider receipts (delivered, read, failed): linked to a message or ignored",
                ["provider", "kind", "outcome"],
                registry=r,
            ),
            (closed(PROVIDERS), closed(RECEIPT_KINDS), closed(RECEIPT_OUTCOMES)),
        )
        self._webhooks = _Family(
            Counter(
                "consentgate_webhook_deliveries",
                "CRM/CMP webhook delivery attempts: delivered (2xx), failed (will retry), "
                "dead (gave up)",
                ["kind", "event_type", "outcome"],
                registry=r,
            ),
            (closed(WEBHOOK_KINDS), closed(WEBHOOK_EVENT_TYPES), closed(WEBHOOK_OUTCOMES)),
        )
        self._webhook_lag = _Family(
            Histogram(
                "consentgate_webhook_delivery_lag_seconds",
                "From the outbox event's creation to its successful delivery",
                ["kind"],
                buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400),
                registry=r,
            ),
            (closed(WEBHOOK_KINDS),),
        )
        self._http = _Family(
            Counter(
                "consentgate_http_requests",
                "HTTP requests served, by method, route template and status code",
                ["method", "route", "status"],
                registry=r,
            ),
            (closed(METHODS), route_label, shaped(_STATUS_CODE)),
        )
        self._http_seconds = _Family(
            Histogram(
                "consentgate_http_request_duration_seconds",
                "Time to serve an HTTP request, by method and route template",
                ["method", "route"],
                buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
                registry=r,
            ),
            (closed(METHODS), route_label),
        )

        self._invalidation_reach = Histogram(
            "consentgate_consent_invalidation_reach_seconds",
            "From a consent change's NOTIFY (the writer's clock just before its commit) to its "
            "arrival at this process's cache listener, per changed key (PostgreSQL)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=r,
        )

    def add_collector(self, collector: Collector) -> None:
        self.registry.register(collector)
        self._collectors.append(collector)

    def exposition_registry(self) -> CollectorRegistry:
        """What a scrape reads: :attr:`registry`, or, when the processes of ``serve --workers
        N`` share their counters (:func:`share_across_processes`), every process's counters
        and histograms added up from their files, with this process's own collectors (the
        store's gauges, the build info)."""
        directory = os.environ.get(MULTIPROC_ENV)
        if not directory:
            return self.registry
        if self._shared is None:
            shared = CollectorRegistry(auto_describe=True)
            MultiProcessCollector(shared, path=directory)  # type: ignore[no-untyped-call]
            shared.register(self._build)
            for collector in self._collectors:
                shared.register(collector)
            self._shared = shared
        return self._shared

    def bind_names(
        self, tenant_known: Callable[[str], bool], purpose_known: Callable[[str, str], bool]
    ) -> None:
        """Close the tenant and purpose labels: a name is a label value only if the tenant
        (its purpose catalogue) has it; anything else is ``other``."""
        self._tenant_known = tenant_known
        self._purpose_known = purpose_known

    def _tenant_label(self, value: Any) -> str:
        label = tenant_label(value)
        if label in (NONE, OTHER) or self._tenant_known is None:
            return label
        try:
            return label if self._tenant_known(label) else OTHER
        except Exception as exc:  # a metric must never fail the operation it counts
            raise _Unsure from exc

    def _purpose_row(self, values: tuple[Any, ...], labels: list[str]) -> None:
        if labels[0] in (NONE, OTHER) or labels[1] in (NONE, OTHER):
            return
        if self._purpose_known is None:
            return
        try:
            if not self._purpose_known(labels[0], labels[1]):
                labels[1] = OTHER
        except Exception as exc:
            raise _Unsure from exc

    # -- decision points ----------------------------------------------------------------------

    def consent_recorded(
        self, tenant: str, events: Iterable[tuple[str, str, str]], replayed: int = 0
    ) -> None:
        """After an ingest commit: ``(consent_type, status, source)`` per new ledger event."""
        for consent_type, status, source in events:
            self._consent.child(tenant, consent_type, status, source).inc()
        if replayed:
            self._replays.child(tenant).inc(replayed)

    def gate_checked(
        self, tenant: str, reason: str | None, from_cache: bool | None, n: int = 1
    ) -> None:
        """``n`` on-send checks: allowed when ``reason`` is None; ``from_cache`` None when no
        cache was consulted (an unknown subject, a batch read from the store)."""
        result = "allowed" if reason is None else "denied"
        self._gate.child(tenant, "check", result, reason).inc(n)
        if from_cache is not None:
            self._gate_cache.child("hit" if from_cache else "miss").inc(n)

    def gate_prefiltered(self, tenant: str, counts: dict[str | None, int]) -> None:
        """One campaign pre-filter: how many rows per refusal reason (None: allowed)."""
        for reason, n in counts.items():
            if n:
                result = "allowed" if reason is None else "denied"
                self._gate.child(tenant, "prefilter", result, reason).inc(n)

    def send_decided(
        self, tenant: str, action: str, mode: str | None, reason: str | None, n: int = 1
    ) -> None:
        """After ``n`` messages' decision rows are written (a batch counts at once)."""
        self._sends.child(tenant, action, mode, reason).inc(n)
        if action == SendAction.FALLBACK.value:
            self._fallbacks.child(tenant, mode, reason).inc(n)

    def campaign_recipients(self, tenant: str, outcome: str, n: int = 1) -> None:
        if n:
            self._campaign.child(tenant, outcome).inc(n)

    def receipt(self, provider: str, kind: str, linked: bool) -> None:
        self._receipts.child(provider, kind, "linked" if linked else "ignored").inc()

    def webhook_delivery(
        self, kind: str, event_type: str, outcome: str, lag_seconds: float | None = None
    ) -> None:
        """One delivery attempt by the relay; ``lag_seconds`` (event created → delivered)
        when it succeeded."""
        self._webhooks.child(kind, event_type, outcome).inc()
        if outcome == "delivered" and lag_seconds is not None:
            self._webhook_lag.child(kind).observe(max(0.0, lag_seconds))

    def invalidation_reached(self, seconds: float, keys: int = 1) -> None:
        """A NOTIFY of ``keys`` consent changes reached this process ``seconds`` after the
        writer stamped it."""
        for _ in range(keys):
            self._invalidation_reach.observe(seconds)

    def http_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self._http.child(method, route, status).inc()
        self._http_seconds.child(method, route).observe(seconds)


__all__ = ["NONE", "OTHER", "Metrics", "closed", "purpose_label", "shaped", "tenant_label"]
