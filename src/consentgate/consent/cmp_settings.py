"""Per-tenant CMP settings: the CMP's JWKS for signed receipts, and adapter mappings.

Mappings are validated here, at the boundary, against the tenant's purpose catalogue and the
IAB field names, so an adapter can trust them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, delete, insert, select

from consentgate.domain.clock import Clock
from consentgate.domain.timeutil import to_micros
from consentgate.errors import InvalidInput
from consentgate.storage.engine import read_tx, write_tx
from consentgate.storage.tables import cmp_mappings, cmp_settings
from consentgate.tenants.service import TenantService

TCF_PURPOSES = range(1, 12)  # TCF v2.2 defines purposes 1-11
# The usnat fields where 1 means "opted out", and the GPC signal (true = opt out).
USNAT_OPT_OUTS = frozenset({"SaleOptOut", "SharingOptOut", "TargetedAdvertisingOptOut", "Gpc"})


@dataclass(frozen=True, slots=True)
class ReceiptPolicy:
    jwks: dict[str, Any] | None = None
    required: bool = False


@dataclass(frozen=True, slots=True)
class TcfMapping:
    vendor_id: int | None
    purposes: dict[str, tuple[int, ...]]


@dataclass(frozen=True, slots=True)
class GppMapping:
    usnat: dict[str, tuple[str, ...]] = field(default_factory=dict)


def _public_only(jwks: Any) -> dict[str, Any]:
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list) or not keys:
        raise InvalidInput("jwks must be a JWK set with at least one key", field="jwks")
    for i, key in enumerate(keys):
        if not isinstance(key, dict) or key.get("kty") not in {"RSA", "EC", "OKP"}:
            raise InvalidInput(
                "only RSA, EC and OKP public keys are accepted", field=f"jwks.keys[{i}]"
            )
        if any(p in key for p in ("d", "p", "q", "dp", "dq", "qi", "k")):
            raise InvalidInput("a JWKS must hold public keys only", field=f"jwks.keys[{i}]")
        if not key.get("kid"):
            raise InvalidInput("every key needs a kid", field=f"jwks.keys[{i}].kid")
    return {"keys": keys}


class CmpSettings:
    def __init__(
        self, engine: Engine, tenants: TenantService, clock: Clock, cache_seconds: float = 5.0
    ) -> None:
        # Read on every ingest: cached like the purpose catalogue (a change made through this
        # process is seen at once, one made by another process within cache_seconds).
        self._cache_seconds = cache_seconds
        self._policies: dict[str, tuple[float, ReceiptPolicy]] = {}
        self._engine = engine
        self._tenants = tenants
        self._clock = clock

    def put_keys(self, tenant: str, jwks: Any, required: bool) -> ReceiptPolicy:
        checked = _public_only(jwks)
        with write_tx(self._engine) as conn:
            conn.execute(delete(cmp_settings).where(cmp_settings.c.tenant_id == tenant))
            conn.execute(
                insert(cmp_settings).values(
                    tenant_id=tenant,
                    jwks=json.dumps(checked),
                    require_signed_receipts=required,
                    updated_us=to_micros(self._clock.now()),
                )
            )
        self._policies.pop(tenant, None)
        return ReceiptPolicy(checked, required)

    def receipt_policy(self, tenant: str) -> ReceiptPolicy:
        cached = self._policies.get(tenant)
        now = time.monotonic()
        if cached is not None and now - cached[0] < self._cache_seconds:
            return cached[1]
        policy = self._load_policy(tenant)
        self._policies[tenant] = (now, policy)
        return policy

    def _load_policy(self, tenant: str) -> ReceiptPolicy:
        with read_tx(self._engine) as conn:
            row = conn.execute(
                select(cmp_settings.c.jwks, cmp_settings.c.require_signed_receipts).where(
                    cmp_settings.c.tenant_id == tenant
                )
            ).one_or_none()
        if row is None:
            return ReceiptPolicy()
        return ReceiptPolicy(
            json.loads(row.jwks) if row.jwks else None, bool(row.require_signed_receipts)
        )

    # -- mappings ----------------------------------------------------------------------------
    def put_mapping(self, tenant: str, adapter: str, raw: Any) -> dict[str, Any]:
        with write_tx(self._engine) as conn:
            catalogue = self._tenants.purposes(conn, tenant)
            if adapter == "tcf":
                normalised = _check_tcf(raw, catalogue)
            elif adapter == "gpp":
                normalised = _check_gpp(raw, catalogue)
            else:
                raise InvalidInput("mappings exist for the tcf and gpp adapters", field="adapter")
            conn.execute(
                delete(cmp_mappings).where(
                    cmp_mappings.c.tenant_id == tenant, cmp_mappings.c.adapter == adapter
                )
            )
            conn.execute(
                insert(cmp_mappings).values(
                    tenant_id=tenant,
                    adapter=adapter,
                    mapping=json.dumps(normalised, sort_keys=True),
                    updated_us=to_micros(self._clock.now()),
                )
            )
        return normalised

    def mapping(self, conn: Connection, tenant: str, adapter: str) -> dict[str, Any] | None:
        raw = conn.execute(
            select(cmp_mappings.c.mapping).where(
                cmp_mappings.c.tenant_id == tenant, cmp_mappings.c.adapter == adapter
            )
        ).scalar_one_or_none()
        return None if raw is None else dict(json.loads(raw))

    def tcf_mapping(self, tenant: str) -> TcfMapping | None:
        with read_tx(self._engine) as conn:
            raw = self.mapping(conn, tenant, "tcf")
        if raw is None:
            return None
        return TcfMapping(raw["vendor_id"], {k: tuple(v) for k, v in raw["purposes"].items()})

    def gpp_mapping(self, tenant: str) -> GppMapping | None:
        with read_tx(self._engine) as conn:
            raw = self.mapping(conn, tenant, "gpp")
        if raw is None:
            return None
        return GppMapping({k: tuple(v) for k, v in raw.get("usnat", {}).items()})


def _check_purpose(name: Any, catalogue: dict[str, Any], where: str) -> str:
    if not isinstance(name, str) or name not in catalogue:
        raise InvalidInput(
            f"unknown purpose; this tenant's purposes: {', '.join(sorted(catalogue))}", field=where
        )
    return name


def _check_tcf(raw: Any, catalogue: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(raw, dict) or set(raw) - {"vendor_id", "purposes"}:
        raise InvalidInput("a TCF mapping is {vendor_id?, purposes}", field="body")
    vendor = raw.get("vendor_id")
    if vendor is not None and (
        not isinstance(vendor, int) or isinstance(vendor, bool) or vendor < 1
    ):
        raise InvalidInput("vendor_id must be a positive integer (a GVL id)", field="vendor_id")
    purposes = raw.get("purposes")
    if not isinstance(purposes, dict) or not purposes:
        raise InvalidInput(
            "purposes must map consentgate purposes to TCF purposes", field="purposes"
        )
    out: dict[str, list[int]] = {}
    for name, ids in purposes.items():
        _check_purpose(name, catalogue, f"purposes.{name}")
        if (
            not isinstance(ids, list)
            or not ids
            or any(
                not isinstance(i, int) or isinstance(i, bool) or i not in TCF_PURPOSES for i in ids
            )
        ):
            raise InvalidInput(
                "TCF purposes are a non-empty list of ids 1-11", field=f"purposes.{name}"
            )
        out[name] = sorted(set(ids))
    return {"vendor_id": vendor, "purposes": out}


def _check_gpp(raw: Any, catalogue: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(raw, dict) or set(raw) - {"usnat"}:
        raise InvalidInput("a GPP mapping is {usnat: {field: [purposes]}}", field="body")
    usnat = raw.get("usnat", {})
    if not isinstance(usnat, dict):
        raise InvalidInput("usnat must map opt-out fields to purposes", field="usnat")
    out: dict[str, list[str]] = {}
    for name, targets in usnat.items():
        if name not in USNAT_OPT_OUTS:
            allowed = ", ".join(sorted(USNAT_OPT_OUTS))
            raise InvalidInput(
                f"unknown usnat opt-out field; one of {allowed}", field=f"usnat.{name}"
            )
        if not isinstance(targets, list) or not targets:
            raise InvalidInput("a non-empty list of purposes", field=f"usnat.{name}")
        out[name] = sorted({_check_purpose(t, catalogue, f"usnat.{name}") for t in targets})
    return {"usnat": out}
