"""The relay: claim due deliveries, send them as signed webhooks, record the outcomes.

One pass (:meth:`Relay.run_once`) is three steps, each batched: a claim transaction (up to
``batch`` deliveries, ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so any number of relay
processes share the queue; the claim is a lease: ``due_us`` moves to its end and a random
token marks the claimer), the HTTP requests (concurrently, :mod:`consentgate.outbox.sender`),
and one outcome transaction that only touches rows still carrying this pass's token. A relay
that dies leaves its claims to expire; they are then claimed again and re-sent under the same
``webhook-id`` (at-least-once; receivers de-duplicate).

Order per (endpoint, subject): a delivery is claimable only while no earlier delivery of the
same endpoint and ``order_key`` is pending (in flight, or waiting for a retry). A subject's
events therefore reach an endpoint one at a time, in the order they were recorded; a dead one
stops blocking its successors.

An erasure notice (``subject.erased``) carries the erased subject's hashed ids: the outcome
transaction that finishes its last delivery also replaces its body with a purged marker
(:func:`consentgate.outbox.store.purge_notices`).
"""

from __future__ import annotations

import logging
import random
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, bindparam, exists, select, update

from consentgate.config import WebhookSettings
from consentgate.domain.clock import Clock
from consentgate.domain.timeutil import to_micros
from consentgate.errors import ConsentGateError
from consentgate.observability.metrics import Metrics
from consentgate.outbox import rules
from consentgate.outbox.endpoints import EndpointService
from consentgate.outbox.events import SUBJECT_ERASED
from consentgate.outbox.sender import Request, Result, Sender
from consentgate.outbox.store import PENDING, purge_notices
from consentgate.storage.engine import single_read, write_tx
from consentgate.storage.tables import crm_endpoints, outbox_deliveries, outbox_events

log = logging.getLogger("consentgate.relay")

d, e, p = outbox_deliveries, outbox_events, crm_endpoints


@dataclass(frozen=True, slots=True)
class Job:
    delivery_id: int
    tenant: str
    endpoint_id: str
    kind: str
    url: str
    secret: bytes | None  # None: the key store could not unwrap it
    event_type: str
    event_seq: int
    webhook_id: str
    body: bytes
    attempts: int  # before this one
    queued_us: int
    created_us: int


@dataclass(frozen=True, slots=True)
class Claimed:
    token: str  # marks this claim's rows: outcomes are recorded only where it still stands
    jobs: list[Job]
    started: float  # time.monotonic() of the claim: the lease runs from here


UNTRIED = Result(attempted=False)
UNSIGNABLE = Result(attempted=True, error="endpoint secret unavailable")


class Relay:
    def __init__(
        self,
        engine: Engine,
        endpoints: EndpointService,
        clock: Clock,
        settings: WebhookSettings,
        sender: Sender,
        *,
        metrics: Metrics | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._engine = engine
        self._endpoints = endpoints
        self._clock = clock
        self._settings = settings
        self._sender = sender
        self._metrics = metrics or Metrics()
        self._rand = rand
        self._policy = rules.RetryPolicy(
            settings.retry_base_seconds, settings.retry_max_seconds, settings.give_up_seconds
        )
        self._secrets: dict[tuple[str, str], bytes] = {}

    def _now(self) -> int:
        return to_micros(self._clock.now())

    def run_once(self) -> int:
        """One pass; returns how many deliveries were claimed (0: nothing was due)."""
        batch = self._claim()
        if batch.jobs:
            self._deliver(batch)
        return len(batch.jobs)

    def run(self, stop: threading.Event, idle_seconds: float) -> None:
        """Pass after pass until ``stop`` is set. The next batch is claimed (in another
        thread) while the current one is being sent, so the database's work and the network's
        overlap; what is claimed ahead when ``stop`` comes is released at once."""
        with ThreadPoolExecutor(1, thread_name_prefix="relay-claim") as claimer:
            ahead: Future[Claimed] | None = None
            while not stop.is_set():
                try:
                    batch = ahead.result() if ahead is not None else self._claim()
                    ahead = None
                    if not batch.jobs:
                        stop.wait(idle_seconds)
                        continue
                    ahead = claimer.submit(self._claim)
                    self._deliver(batch, stop)
                except Exception as exc:  # the store is down, say: claims expire, retry later
                    log.warning("relay pass failed (%s); retrying", type(exc).__name__)
                    stop.wait(idle_seconds)
            if ahead is not None:
                try:
                    batch = ahead.result()
                    self._record(batch.token, batch.jobs, [UNTRIED] * len(batch.jobs))
                except Exception as exc:  # its lease will expire instead
                    log.warning("relay could not release its claims (%s)", type(exc).__name__)

    def _deliver(self, batch: Claimed, cancel: threading.Event | None = None) -> None:
        # Stop starting requests well before the lease ends: a request may take the timeout.
        lease = self._settings.lease_seconds
        deadline = batch.started + max(lease / 2, lease - 2 * self._settings.timeout_seconds)
        signable = [j for j in batch.jobs if j.secret is not None]
        sent = iter(self._sender.send_all([self._request(j) for j in signable], deadline, cancel))
        # A job whose secret the key store could not unwrap fails like an unreachable
        # endpoint (retried, then dead) instead of stalling every other delivery.
        results = [UNSIGNABLE if j.secret is None else next(sent) for j in batch.jobs]
        self._record(batch.token, batch.jobs, results)

    def _request(self, job: Job) -> Request:
        secret = job.secret
        assert secret is not None

        def headers() -> dict[str, str]:
            at = int(self._clock.now().timestamp())
            return rules.signed_headers(secret, job.webhook_id, at, job.body)

        return Request(job.url, job.body, headers)

    def _claim(self) -> Claimed:
        started = time.monotonic()
        now = self._now()
        token = secrets.token_hex(16)
        earlier = d.alias("earlier")
        blocked = exists().where(
            earlier.c.endpoint_id == d.c.endpoint_id,
            earlier.c.order_key == d.c.order_key,
            earlier.c.event_seq < d.c.event_seq,
            earlier.c.status == PENDING,
        )
        due = (
            select(d.c.id)
            .where(d.c.status == PENDING, d.c.due_us <= now, ~blocked)
            .order_by(d.c.due_us)
            .limit(self._settings.batch)
        )
        # Idle passes (most of them) take no write lock: on SQLite a write transaction every
        # poll would queue behind, and hold up, the ingest path.
        with single_read(self._engine) as conn:
            anything = conn.execute(
                select(d.c.id).where(d.c.status == PENDING, d.c.due_us <= now).limit(1)
            ).first()
        if anything is None:
            return Claimed(token, [], started)
        with write_tx(self._engine) as conn:
            if conn.dialect.name == "postgresql":
                due = due.with_for_update(skip_locked=True, of=d)
                # Until statistics catch up with a burst (autovacuum: up to a minute), the
                # planner takes the table for tiny and probes "earlier" by scanning every
                # pending row per candidate (O(n²): seconds per claim, seen in the bench).
                # The claim must not hang on fresh statistics: index probes only.
                conn.exec_driver_sql(
                    "SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off"
                )
            ids = list(conn.execute(due).scalars())
            if not ids:
                return Claimed(token, [], started)
            lease = now + int(self._settings.lease_seconds * 1_000_000)
            conn.execute(update(d).where(d.c.id.in_(ids)).values(claim=token, due_us=lease))
            rows = conn.execute(
                select(
                    d.c.id,
                    d.c.tenant_id,
                    d.c.attempts,
                    d.c.queued_us,
                    d.c.event_seq,
                    e.c.event_id,
                    e.c.event_type,
                    e.c.body,
                    e.c.created_us,
                    p.c.id.label("endpoint_id"),
                    p.c.kind,
                    p.c.url,
                    p.c.secret_wrapped,
                )
                .join(e, e.c.seq == d.c.event_seq)
                .join(p, p.c.id == d.c.endpoint_id)
                .where(d.c.id.in_(ids))
                .order_by(d.c.due_us, d.c.id)
            ).all()
        return Claimed(token, [self._job(r) for r in rows], started)

    def _job(self, r: Any) -> Job:
        key = (r.tenant_id, r.endpoint_id)
        secret = self._secrets.get(key)
        if secret is None:
            try:
                secret = self._endpoints.secret(r.tenant_id, r.endpoint_id, bytes(r.secret_wrapped))
                self._secrets[key] = secret
            except ConsentGateError as exc:  # KeyStoreError: a damaged or missing key
                log.error("endpoint %s: secret not usable (%s)", r.endpoint_id, exc.code)
        return Job(
            delivery_id=int(r.id),
            tenant=r.tenant_id,
            endpoint_id=r.endpoint_id,
            kind=r.kind,
            url=r.url,
            secret=secret,
            event_type=r.event_type,
            event_seq=int(r.event_seq),
            webhook_id=rules.webhook_id(r.event_id, r.endpoint_id),
            body=r.body.encode(),
            attempts=int(r.attempts),
            queued_us=int(r.queued_us),
            created_us=int(r.created_us),
        )

    def _record(self, token: str, jobs: list[Job], results: list[Result]) -> None:
        """Store the outcomes in one transaction, in a few statements: outcomes that share
        their values (delivered with a 204, say) are one UPDATE over their ids; only retries,
        each due at its own time, are one row each."""
        now = self._now()
        finished: dict[tuple[str, int | None, str | None], list[int]] = {}
        retries: list[dict[str, Any]] = []
        untried: list[int] = []
        tally: list[tuple[Job, str]] = []
        for job, result in zip(jobs, results, strict=True):
            if not result.attempted:
                untried.append(job.delivery_id)
                continue
            if result.ok:
                finished.setdefault(("delivered", result.status, None), []).append(job.delivery_id)
                tally.append((job, "delivered"))
                continue
            attempts = job.attempts + 1
            retry = self._policy.after_failure(attempts, now, job.queued_us, self._rand)
            if retry is None:
                finished.setdefault(("dead", result.status, result.error), []).append(
                    job.delivery_id
                )
                tally.append((job, "dead"))
                log.warning(
                    "webhook delivery %d to endpoint %s is dead after %d attempts (%s)",
                    job.delivery_id,
                    job.endpoint_id,
                    attempts,
                    result.error,
                )
            else:
                retries.append(
                    {
                        "b_id": job.delivery_id,
                        "b_due": retry,
                        "b_code": result.status,
                        "b_error": result.error,
                    }
                )
                tally.append((job, "failed"))
        mine = d.c.claim == token  # a claim taken over since (lease expired) is not ours
        with write_tx(self._engine) as conn:
            for (status, code, error), ids in finished.items():
                conn.execute(
                    update(d)
                    .where(mine, d.c.id.in_(ids))
                    .values(
                        status=status,
                        attempts=d.c.attempts + 1,
                        due_us=now,
                        claim=None,
                        last_attempt_us=now,
                        delivered_us=now if status == "delivered" else None,
                        last_status=code,
                        last_error=error,
                    )
                )
            if retries:
                conn.execute(
                    update(d)
                    .where(mine, d.c.id == bindparam("b_id"))
                    .values(
                        attempts=d.c.attempts + 1,
                        due_us=bindparam("b_due"),
                        claim=None,
                        last_attempt_us=now,
                        last_status=bindparam("b_code"),
                        last_error=bindparam("b_error"),
                    ),
                    retries,
                )
            if untried:
                conn.execute(
                    update(d).where(mine, d.c.id.in_(untried)).values(claim=None, due_us=now)
                )
            # Erasure notices that may just have had their last delivery finished.
            notices = [
                job.event_seq
                for job, outcome in tally
                if outcome != "failed" and job.event_type == SUBJECT_ERASED
            ]
            if notices:
                purge_notices(conn, notices)
        for job, outcome in tally:
            lag = (now - job.created_us) / 1e6 if outcome == "delivered" else None
            self._metrics.webhook_delivery(job.kind, job.event_type, outcome, lag)


class RelayWorker:
    """A thread that runs the relay until stopped."""

    def __init__(self, relay: Relay, sender: Sender, idle_seconds: float = 0.2) -> None:
        self._relay = relay
        self._sender = sender
        self._idle = idle_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="relay", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self._sender.close()

    def _run(self) -> None:
        self._relay.run(self._stop, self._idle)
