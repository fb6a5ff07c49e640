"""Signed CMP webhooks: authenticate, de-duplicate by ``webhook-id``, adapt, ingest.

A delivery's answer is stored in the same transaction as the events it recorded, so a
replayed ``webhook-id`` gets the original answer and records nothing twice, even across a
crash between commit and response.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError

from consentgate.cmp import webhook
from consentgate.consent.batcher import Batcher
from consentgate.consent.group_commit import GroupCommitter
from consentgate.consent.ingest import EventInput, IngestResult, IngestService, Prepared
from consentgate.crypto.keystore import KeyStore
from consentgate.domain import strictjson
from consentgate.domain.clock import Clock
from consentgate.domain.timeutil import to_micros
from consentgate.errors import InvalidInput, NotFound, Unauthenticated
from consentgate.storage import lean
from consentgate.storage.engine import translated
from consentgate.tenants.service import TenantService

# An adapter: (tenant, parsed JSON payload) → (events, is_batch). Raises InvalidInput or
# pydantic.ValidationError on a payload it cannot map.
Adapter = Callable[[str, Any], tuple[list[EventInput], bool]]

_STORED = (
    "SELECT webhook_id, status_code, response FROM webhook_receipts "
    "WHERE tenant_id = :t AND webhook_id IN ({})"
)
_SHARDS = 8  # batcher threads per process, each started on its first delivery
_ANSWER_COLUMNS = ("tenant_id", "webhook_id", "status_code", "response", "received_us")


@dataclass(frozen=True, slots=True)
class WebhookOutcome:
    status: int
    body: dict[str, Any]
    replayed: bool


@dataclass(frozen=True, slots=True)
class Delivery:
    """One signed request as received."""

    tenant: str
    adapter: str
    headers: Mapping[str, str]
    body: bytes = field(repr=False)


@dataclass(slots=True)
class _Pending:
    webhook_id: str
    prepared: Prepared = field(init=False)
    outcome: WebhookOutcome | None = None  # set by the commit that records it


class CmpWebhookService:
    def __init__(
        self,
        engine: Engine,
        tenants: TenantService,
        keystore: KeyStore,
        ingest: IngestService,
        committer: GroupCommitter,
        clock: Clock,
        adapters: Mapping[str, Adapter],
        linger: float = 0.0,
    ) -> None:
        self._engine = engine
        self._tenants = tenants
        self._keys = keystore
        self._ingest = ingest
        self._committer = committer
        self._clock = clock
        self._adapters = dict(adapters)
        # A tenant's deliveries always go to the same batcher thread (one transaction per
        # batch and tenant); tenants on different threads commit side by side.
        self._batchers: list[Batcher[Delivery, WebhookOutcome]] = [
            Batcher(self.handle_many, f"cmp-webhooks-{n}", linger=linger) for n in range(_SHARDS)
        ]

    @property
    def adapter_names(self) -> list[str]:
        return sorted(self._adapters)

    def _stored(self, tenant: str, webhook_ids: list[str]) -> dict[str, WebhookOutcome]:
        """The stored answers of those ``webhook_ids`` already handled (one lean read)."""
        found: dict[str, WebhookOutcome] = {}
        unique = sorted(set(webhook_ids))
        for start in range(0, len(unique), 500):
            params: dict[str, Any] = {"t": tenant}
            marks = lean.placeholders("w", unique[start : start + 500], params)
            with translated():
                answers = lean.read(self._engine, _STORED.format(marks), params)
            for webhook_id, status, response in answers:
                found[webhook_id] = WebhookOutcome(int(status), json.loads(response), True)
        return found

    def _authenticate(
        self, tenant: str, headers: Mapping[str, str], body: bytes
    ) -> webhook.WebhookHeaders:
        if not self._tenants.exists(tenant) or not self._keys.has_tenant(tenant):
            # Same answer as a bad signature: a caller learns nothing about which tenants exist.
            raise Unauthenticated("webhook-signature does not verify")
        return webhook.authenticate(
            headers, body, lambda data: self._keys.webhook_mac(tenant, data), self._clock.now()
        )

    def _prepare(
        self, tenant: str, adapter: str, webhook_id: str, body: bytes
    ) -> _Pending | WebhookOutcome:
        """Adapt and validate a new delivery: what to commit, or the answer when there is
        nothing to record."""
        convert = self._adapters.get(adapter)
        if convert is None:
            raise NotFound(
                f"no CMP adapter named {adapter!r}; one of {', '.join(self.adapter_names)}"
            )
        try:
            payload = strictjson.loads(body)
        except strictjson.NotJson as exc:
            raise InvalidInput(f"the body is not valid UTF-8 JSON: {exc}", field="body") from None
        events, batch = convert(tenant, payload)
        if not events:
            # e.g. a GPP string with no mapped opt-out set: nothing to record, nothing wrong.
            return WebhookOutcome(200, {"events": []}, False)
        pending = _Pending(webhook_id)

        def remember(conn: Connection, results: list[IngestResult]) -> None:
            # The answer, stored by _store_answers in the transaction that records the events.
            status = 201 if any(r.created for r in results) else 200
            pending.outcome = WebhookOutcome(
                status, {"events": [r.as_dict() for r in results]}, False
            )

        pending.prepared = self._ingest.prepare(
            tenant,
            self._tenants.region(tenant),
            events,
            batch=batch or len(events) > 1,
            within=remember,
        )
        return pending

    async def deliver(self, delivery: Delivery) -> WebhookOutcome:
        """For an event loop: :meth:`handle_many` in a worker thread, together with whatever
        other deliveries are waiting (:mod:`consentgate.consent.batcher`)."""
        # (Here, not in a route: the hot path calls this too.)
        strictjson.require_media_type(delivery.headers.get("content-type"), "application/json")
        shard = zlib.crc32(delivery.tenant.encode()) % _SHARDS
        return await self._batchers[shard].submit(delivery)

    def close(self) -> None:
        for batcher in self._batchers:
            batcher.close()

    def handle(
        self, tenant: str, adapter: str, headers: Mapping[str, str], body: bytes
    ) -> WebhookOutcome:
        """One delivery: its answer, or the error to answer with."""
        (answer,) = self.handle_many([Delivery(tenant, adapter, headers, body)])
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def handle_many(self, deliveries: Sequence[Delivery]) -> list[WebhookOutcome | Exception]:
        """Deliveries that arrived together, each answered as if alone: authenticated one by
        one; the replay check is one read per tenant; each tenant's new deliveries are
        committed in one transaction (one fsync, one checkpoint), and should that fail, one
        by one, so a bad delivery never fails its neighbours. A ``webhook-id`` given twice is
        handled in a second round, where the first one's stored answer is found."""
        answers: list[WebhookOutcome | Exception | None] = [None] * len(deliveries)
        rounds: list[dict[str, list[tuple[int, str]]]] = []
        occurrences: dict[tuple[str, str], int] = {}
        for i, d in enumerate(deliveries):
            try:
                webhook_id = self._authenticate(d.tenant, d.headers, d.body).webhook_id
            except Exception as exc:
                answers[i] = exc
                continue
            n = occurrences.get((d.tenant, webhook_id), 0)
            occurrences[(d.tenant, webhook_id)] = n + 1
            if n == len(rounds):
                rounds.append({})
            rounds[n].setdefault(d.tenant, []).append((i, webhook_id))
        for by_tenant in rounds:
            for tenant, items in by_tenant.items():
                self._handle_tenant(tenant, items, deliveries, answers)
        assert all(a is not None for a in answers)
        return [a for a in answers if a is not None]

    def _handle_tenant(
        self,
        tenant: str,
        items: list[tuple[int, str]],
        deliveries: Sequence[Delivery],
        answers: list[WebhookOutcome | Exception | None],
    ) -> None:
        try:
            stored = self._stored(tenant, [webhook_id for _, webhook_id in items])
        except Exception as exc:
            for i, _ in items:
                answers[i] = exc
            return
        pending: list[tuple[int, _Pending]] = []
        for i, webhook_id in items:
            if webhook_id in stored:
                answers[i] = stored[webhook_id]
                continue
            try:
                prepared = self._prepare(
                    tenant, deliveries[i].adapter, webhook_id, deliveries[i].body
                )
            except Exception as exc:
                answers[i] = exc
                continue
            if isinstance(prepared, WebhookOutcome):
                answers[i] = prepared
            else:
                pending.append((i, prepared))
        by_request = {id(p.prepared): p for _, p in pending}

        def store_answers(conn: Connection, requests: list[Prepared]) -> None:
            """Every answer of this transaction in one statement, with what it recorded."""
            now_us = to_micros(self._clock.now())
            rows = []
            for request in requests:
                done = by_request[id(request)]
                assert done.outcome is not None
                rows.append(
                    {
                        "tenant_id": tenant,
                        "webhook_id": done.webhook_id,
                        "status_code": done.outcome.status,
                        "response": json.dumps(done.outcome.body),
                        "received_us": now_us,
                    }
                )
            lean.insert_rows(conn, "webhook_receipts", _ANSWER_COLUMNS, rows)

        results = self._committer.commit_now(
            tenant, [p.prepared for _, p in pending], store_answers
        )
        for (i, p), result in zip(pending, results, strict=True):
            if isinstance(result, IntegrityError):
                # The same webhook-id raced us from another process and won: answer as it did.
                raced = self._stored(tenant, [p.webhook_id]).get(p.webhook_id)
                answers[i] = raced if raced is not None else result
            elif isinstance(result, Exception):
                answers[i] = result
            elif isinstance(result, BaseException):
                raise result  # an interrupt, not this delivery's answer
            else:
                assert p.outcome is not None
                answers[i] = p.outcome
