"""CRM/CMP webhook endpoints: registration, listing, disabling, and their secrets.

An endpoint's signing secret (32 random bytes, shown once as ``whsec_<base64>``) is stored
only wrapped by the key store, bound to the tenant and the endpoint id, so a database dump
alone cannot forge webhooks. Disabling an endpoint keeps its history; its pending deliveries
become ``dead`` (reason ``endpoint disabled``) and it receives nothing more; an erasure notice
whose last delivery that was is purged then.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Engine, insert, select, update

from consentgate.crypto.keystore import KeyStore
from consentgate.domain.clock import Clock
from consentgate.domain.timeutil import format_rfc3339, from_micros, to_micros
from consentgate.errors import InvalidInput, NotFound
from consentgate.outbox import rules
from consentgate.outbox.events import EVENT_TYPES, SUBJECT_ERASED
from consentgate.outbox.store import PENDING, purge_notices
from consentgate.storage.engine import read_tx, write_tx
from consentgate.storage.tables import crm_endpoints, outbox_deliveries, outbox_events

ENDPOINT_KINDS = ("crm", "cmp")
MAX_URL = 2000


def check_endpoint(
    url: str, event_types: Sequence[str], kind: str
) -> tuple[str, tuple[str, ...], str]:
    """Validate a registration; return (url, event types deduplicated in order, kind)."""
    if not url or len(url) > MAX_URL or any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise InvalidInput(f"url must be 1-{MAX_URL} characters, no spaces", field="url")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a malformed port
    except ValueError:
        raise InvalidInput("url is not a valid URL", field="url") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput("url must be an absolute http:// or https:// URL", field="url")
    if parts.username is not None or parts.password is not None:
        raise InvalidInput(
            "url must not carry credentials: webhooks are authenticated by their signature",
            field="url",
        )
    if parts.fragment or (port is not None and port == 0):
        raise InvalidInput("url must not have a fragment or port 0", field="url")
    if kind not in ENDPOINT_KINDS:
        raise InvalidInput("kind must be crm or cmp", field="kind")
    if not event_types:
        raise InvalidInput("event_types must name at least one event type", field="event_types")
    chosen: list[str] = []
    for i, name in enumerate(event_types):
        if name not in EVENT_TYPES:
            raise InvalidInput(
                f"unknown event type; one of {', '.join(EVENT_TYPES)}", field=f"event_types[{i}]"
            )
        if name not in chosen:
            chosen.append(name)
    return url, tuple(chosen), kind


def secret_context(endpoint_id: str) -> str:
    """What the wrapped secret is bound to (with the tenant): it unwraps for no other row."""
    return f"crm-endpoint:{endpoint_id}"


def _view(row: Any) -> dict[str, Any]:
    return {
        "endpoint_id": row.id,
        "url": row.url,
        "kind": row.kind,
        "event_types": row.event_types.split(","),
        "active": bool(row.active),
        "created_at": format_rfc3339(from_micros(row.created_us)),
        "disabled_at": None
        if row.disabled_us is None
        else format_rfc3339(from_micros(row.disabled_us)),
    }


class EndpointService:
    def __init__(self, engine: Engine, keystore: KeyStore, clock: Clock) -> None:
        self._engine = engine
        self._keys = keystore
        self._clock = clock

    def create(
        self, tenant: str, url: str, event_types: Sequence[str], kind: str = "crm"
    ) -> dict[str, Any]:
        """Register an endpoint; the answer holds its secret, the only time it is shown."""
        url, types, kind = check_endpoint(url, event_types, kind)
        endpoint_id = "ep_" + secrets.token_hex(10)
        secret = secrets.token_bytes(32)
        wrapped = self._keys.wrap_data_key(tenant, secret, secret_context(endpoint_id))
        now = to_micros(self._clock.now())
        with write_tx(self._engine) as conn:
            conn.execute(
                insert(crm_endpoints).values(
                    id=endpoint_id,
                    tenant_id=tenant,
                    url=url,
                    kind=kind,
                    event_types=",".join(types),
                    secret_wrapped=wrapped,
                    active=True,
                    created_us=now,
                )
            )
            row = conn.execute(select(crm_endpoints).where(crm_endpoints.c.id == endpoint_id)).one()
        return {**_view(row), "secret": rules.format_secret(secret)}

    def list(self, tenant: str) -> list[dict[str, Any]]:
        with read_tx(self._engine) as conn:
            rows = conn.execute(
                select(crm_endpoints)
                .where(crm_endpoints.c.tenant_id == tenant)
                .order_by(crm_endpoints.c.created_us, crm_endpoints.c.id)
            ).all()
        return [_view(r) for r in rows]

    def disable(self, tenant: str, endpoint_id: str) -> dict[str, Any]:
        """Stop delivering to the endpoint (idempotent); its pending deliveries go dead."""
        now = to_micros(self._clock.now())
        with write_tx(self._engine) as conn:
            row = conn.execute(
                select(crm_endpoints).where(
                    crm_endpoints.c.tenant_id == tenant, crm_endpoints.c.id == endpoint_id
                )
            ).one_or_none()
            if row is None:
                raise NotFound("no endpoint with this id")
            if row.active:
                # Erasure notices this endpoint had still to receive: their last delivery may
                # be the one going dead here.
                notices = list(
                    conn.execute(
                        select(outbox_deliveries.c.event_seq)
                        .join(outbox_events, outbox_events.c.seq == outbox_deliveries.c.event_seq)
                        .where(
                            outbox_deliveries.c.endpoint_id == endpoint_id,
                            outbox_deliveries.c.status == PENDING,
                            outbox_events.c.event_type == SUBJECT_ERASED,
                        )
                    ).scalars()
                )
                conn.execute(
                    update(crm_endpoints)
                    .where(crm_endpoints.c.id == endpoint_id)
                    .values(active=False, disabled_us=now)
                )
                conn.execute(
                    update(outbox_deliveries)
                    .where(
                        outbox_deliveries.c.endpoint_id == endpoint_id,
                        outbox_deliveries.c.status == PENDING,
                    )
                    .values(status="dead", claim=None, last_error="endpoint disabled")
                )
                purge_notices(conn, notices)
                row = conn.execute(
                    select(crm_endpoints).where(crm_endpoints.c.id == endpoint_id)
                ).one()
        return _view(row)

    def secret(self, tenant: str, endpoint_id: str, wrapped: bytes) -> bytes:
        return self._keys.unwrap_data_key(tenant, wrapped, secret_context(endpoint_id))
