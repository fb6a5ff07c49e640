"""A subject's audit export: everything an auditor needs to check the subject offline.

Read in one snapshot: the subject's leaves, the latest signed checkpoint (which, in the same
snapshot, covers every one of them), a batched inclusion proof per leaf against it, a receipt
per purpose proved against the same checkpoint, every decided send with the ledger seq of the
grant that allowed it, and the delivery events of those sends. The tenant's key store signs
the whole (see :mod:`consentgate.audit.bundle`); the bytes served are the canonical ones.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, Engine, select

from consentgate.audit.bundle import FORMAT, SIGNATURE_TYP, digest
from consentgate.consent.receipts import ON_DEMAND_ATTEMPTS, ReceiptService
from consentgate.consent.subjects import SubjectLinks, check_hashed_id
from consentgate.crypto.jws import sign_compact
from consentgate.crypto.keystore import KeyStore
from consentgate.crypto.signing import public_jwk
from consentgate.domain.clock import Clock
from consentgate.domain.timeutil import format_rfc3339, from_micros
from consentgate.errors import StoreUnavailable
from consentgate.ledger.leaf import canonical
from consentgate.ledger.signer import sign_tenant
from consentgate.ledger.store import LedgerStore, b64
from consentgate.storage.engine import snapshot_tx
from consentgate.storage.tables import ledger_entries, message_events, messages
from consentgate.tenants.service import TenantService


def seal(
    keystore: KeyStore, tenant: str, issuer: str, bundle: dict[str, Any], issued_at: int
) -> bytes:
    """Sign ``bundle`` (its ``signature`` member is replaced) and return canonical bytes."""
    body = {k: v for k, v in bundle.items() if k != "signature"}
    claims = {
        "iss": issuer,
        "jti": str(uuid.uuid4()),
        "iat": issued_at,
        "sub": body["hashed_id"],
        "tenant": tenant,
        "bundle_sha256": digest(body),
    }
    return canonical({**body, "signature": sign_compact(keystore, tenant, claims, SIGNATURE_TYP)})


def _at(micros: int) -> str:
    return format_rfc3339(from_micros(micros))


class ExportService:
    def __init__(
        self,
        engine: Engine,
        tenants: TenantService,
        links: SubjectLinks,
        ledger: LedgerStore,
        receipts: ReceiptService,
        keystore: KeyStore,
        clock: Clock,
        future_skew: timedelta,
    ) -> None:
        self._engine = engine
        self._tenants = tenants
        self._links = links
        self._ledger = ledger
        self._receipts = receipts
        self._keys = keystore
        self._clock = clock
        self._skew = future_skew

    def export(self, tenant: str, hashed_id: str) -> bytes:
        check_hashed_id(hashed_id)
        now = self._clock.now()
        for _ in range(ON_DEMAND_ATTEMPTS):
            with snapshot_tx(self._engine) as conn:
                ref = self._links.resolve_hashed(conn, tenant, hashed_id)
                leaves = conn.execute(
                    select(ledger_entries.c.seq, ledger_entries.c.leaf)
                    .where(
                        ledger_entries.c.tenant_id == tenant, ledger_entries.c.subject_ref == ref
                    )
                    .order_by(ledger_entries.c.seq)
                ).all()
                found = self._ledger.newest_checkpoint(conn, tenant)
                if found is not None and (not leaves or found.tree_size > int(leaves[-1].seq)):
                    checkpoint = found
                    proofs = self._ledger.inclusion_proofs(
                        conn, tenant, [int(r.seq) for r in leaves], checkpoint.tree_size
                    )
                    receipts = self._receipts.receipts_for(
                        conn, tenant, hashed_id, ref, checkpoint, now
                    )
                    sends = self._sends(conn, tenant, ref)
                    break
            # Only when the workers sign checkpoints (CONSENTGATE_CHECKPOINT_ON_COMMIT=false):
            # the newest does not cover this subject's leaves yet, so sign the head now.
            sign_tenant(self._engine, self._ledger, self._clock, tenant)
        else:
            raise StoreUnavailable("the ledger's newest events are not yet in a signed checkpoint")
        catalogue = self._tenants.catalogue(tenant)
        bundle: dict[str, Any] = {
            "format": FORMAT,
            "tenant": tenant,
            "hashed_id": hashed_id,
            "subject_ref": ref,
            "generated_at": format_rfc3339(now),
            "checkpoint": checkpoint.note,
            "keys": {
                "jwks": {
                    "keys": [
                        public_jwk(k.public_key, k.kid) for k in self._keys.signing_keys(tenant)
                    ]
                },
                "ledger_verifier_keys": self._ledger.verifier_keys(tenant),
            },
            "rules": {
                "future_skew_seconds": int(self._skew.total_seconds()),
                "max_age_seconds": {
                    name: None if p.max_age is None else int(p.max_age.total_seconds())
                    for name, p in sorted(catalogue.items())
                },
            },
            "leaves": [
                {
                    "seq": int(r.seq),
                    "leaf": bytes(r.leaf).decode("utf-8"),
                    "inclusion_proof": [b64(h) for h in proofs[int(r.seq)]],
                }
                for r in leaves
            ],
            "receipts": receipts,
            "sends": sends,
        }
        return seal(self._keys, tenant, self._receipts.issuer(tenant), bundle, int(now.timestamp()))

    @staticmethod
    def _sends(conn: Connection, tenant: str, ref: str) -> list[dict[str, Any]]:
        events: dict[str, list[dict[str, str]]] = {}
        for message_id, kind, at_us in conn.execute(
            select(message_events.c.message_id, message_events.c.kind, message_events.c.at_us)
            .join(messages, messages.c.id == message_events.c.message_id)
            .where(messages.c.tenant_id == tenant, messages.c.subject_ref == ref)
            .order_by(message_events.c.at_us, message_events.c.id)
        ):
            events.setdefault(message_id, []).append({"kind": kind, "at": _at(int(at_us))})
        rows = conn.execute(
            select(messages)
            .where(
                messages.c.tenant_id == tenant,
                messages.c.subject_ref == ref,
                messages.c.action != "pending",
            )
            .order_by(messages.c.created_us, messages.c.id)
        )
        return [
            {
                "message_id": r.id,
                "consent_type": r.consent_type,
                "action": r.action,
                "mode": r.mode,
                "reason": r.reason,
                "consent_seq": None if r.consent_seq is None else int(r.consent_seq),
                "template_id": r.template_id,
                "campaign_id": r.campaign_id,
                "device_kid": r.device_kid,
                "status": r.status,
                "at": _at(int(r.created_us)),
                "events": events.get(r.id, []),
            }
            for r in rows
        ]
