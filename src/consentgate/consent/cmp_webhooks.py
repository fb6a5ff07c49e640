"""Signed CMP webhooks: authenticate, de-duplicate by ``webhook-id``, adapt, ingest.

A delivery's answer is stored in the same transaction as the events it recorded, so a
replayed ``webhook-id`` gets the original answer and records nothing twice, even across a
crash between commit and response.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError

from consentgate.cmp import webhook
from consentgate.consent.group_commit import GroupCommitter
from consentgate.consent.ingest import EventInput, IngestResult, IngestService
from consentgate.crypto.keystore import KeyStore
from consentgate.domain.clock import Clock
from consentgate.domain.timeutil import to_micros
from consentgate.errors import InvalidInput, NotFound, Unauthenticated
from consentgate.storage import lean
from consentgate.storage.engine import single_read
from consentgate.tenants.service import TenantService

# An adapter: (tenant, parsed JSON payload) → (events, is_batch). Raises InvalidInput or
# pydantic.ValidationError on a payload it cannot map.
Adapter = Callable[[str, Any], tuple[list[EventInput], bool]]

_STORED = (
    "SELECT status_code, response FROM webhook_receipts WHERE tenant_id = :t AND webhook_id = :w"
)
_REMEMBER = lean.insert_sql(
    "webhook_receipts", ("tenant_id", "webhook_id", "status_code", "response", "received_us")
)


@dataclass(frozen=True, slots=True)
class WebhookOutcome:
    status: int
    body: dict[str, Any]
    replayed: bool


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
    ) -> None:
        self._engine = engine
        self._tenants = tenants
        self._keys = keystore
        self._ingest = ingest
        self._committer = committer
        self._clock = clock
        self._adapters = dict(adapters)

    @property
    def adapter_names(self) -> list[str]:
        return sorted(self._adapters)

    def _stored(self, tenant: str, webhook_id: str) -> WebhookOutcome | None:
        # Every delivery asks this first: a lean statement (consentgate.storage.lean).
        with single_read(self._engine) as conn:
            found = lean.rows(conn, _STORED, {"t": tenant, "w": webhook_id})
        if not found:
            return None
        status, response = found[0]
        return WebhookOutcome(int(status), json.loads(response), True)

    def handle(
        self, tenant: str, adapter: str, headers: Mapping[str, str], body: bytes
    ) -> WebhookOutcome:
        if not self._keys.has_tenant(tenant) or not self._tenants.exists(tenant):
            # Same answer as a bad signature: a caller learns nothing about which tenants exist.
            raise Unauthenticated("webhook-signature does not verify")
        delivery = webhook.authenticate(
            headers, body, lambda data: self._keys.webhook_mac(tenant, data), self._clock.now()
        )
        previous = self._stored(tenant, delivery.webhook_id)
        if previous is not None:
            return previous
        convert = self._adapters.get(adapter)
        if convert is None:
            raise NotFound(
                f"no CMP adapter named {adapter!r}; one of {', '.join(self.adapter_names)}"
            )
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise InvalidInput("the body is not valid UTF-8 JSON", field="body") from None
        events, batch = convert(tenant, payload)
        if not events:
            # e.g. a GPP string with no mapped opt-out set: nothing to record, nothing wrong.
            return WebhookOutcome(200, {"events": []}, False)
        region = self._tenants.region(tenant)
        outcome: dict[str, WebhookOutcome] = {}

        def remember(conn: Connection, results: list[IngestResult]) -> None:
            status = 201 if any(r.created for r in results) else 200
            response = {"events": [r.as_dict() for r in results]}
            lean.run(
                conn,
                _REMEMBER,
                {
                    "tenant_id": tenant,
                    "webhook_id": delivery.webhook_id,
                    "status_code": status,
                    "response": json.dumps(response),
                    "received_us": to_micros(self._clock.now()),
                },
            )
            outcome["result"] = WebhookOutcome(status, response, False)

        try:
            prepared = self._ingest.prepare(
                tenant, region, events, batch=batch or len(events) > 1, within=remember
            )
            self._committer.submit(tenant, prepared)
        except IntegrityError:
            # The same webhook-id raced us and won: answer as it did.
            previous = self._stored(tenant, delivery.webhook_id)
            if previous is None:
                raise
            return previous
        return outcome["result"]
