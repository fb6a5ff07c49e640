"""Signed consent receipts and short-lived consent tokens.

A receipt is an EdDSA JWS over claims that restate one ledger leaf (the one that decides the
subject's current state for a purpose), shipped with that leaf's exact bytes, its inclusion
proof and the signed checkpoint the proof is against: everything an auditor needs to check
it offline (:mod:`consentgate.consent.receipt_check`). Claim names follow the issue's list;
the Kantara Consent Receipt v1.1 / ISO/IEC TS 27560 fields that apply ride alongside.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, select

from consentgate.consent.subjects import HashedIdentifier, SubjectLinks, check_hashed_id
from consentgate.crypto.jws import sign_compact
from consentgate.crypto.keystore import KeyStore
from consentgate.domain import consent as rules
from consentgate.domain.clock import Clock
from consentgate.domain.consent import ConsentStatus, Purpose, StateEntry
from consentgate.domain.reasons import consent_refusal
from consentgate.domain.timeutil import format_rfc3339, from_micros, parse_rfc3339
from consentgate.errors import ConsentRefused, InvalidInput, NotFound, StoreUnavailable
from consentgate.ledger.leaf import parse_leaf
from consentgate.ledger.signer import sign_tenant
from consentgate.ledger.store import LedgerStore, SignedCheckpoint, b64
from consentgate.storage.engine import read_tx
from consentgate.storage.tables import consent_state
from consentgate.tenants.service import TenantService

RECEIPT_TYP = "consent-receipt+jwt"
MAX_TOKEN_TTL = timedelta(minutes=15)
# Reads retried after an on-demand checkpoint (an append may land between the signature and
# the read each time; more than a couple in a row means the tenant is ingesting flat out).
ON_DEMAND_ATTEMPTS = 4


class ReceiptService:
    def __init__(
        self,
        engine: Engine,
        tenants: TenantService,
        links: SubjectLinks,
        ledger: LedgerStore,
        keystore: KeyStore,
        clock: Clock,
        public_url: str,
    ) -> None:
        self._engine = engine
        self._tenants = tenants
        self._links = links
        self._ledger = ledger
        self._keys = keystore
        self._clock = clock
        self._public_url = public_url

    def issuer(self, tenant: str) -> str:
        """The issuer URL; its ``/jwks.json`` serves the keys that verify what it signs."""
        return f"{self._public_url}/v1/tenants/{tenant}"

    def _state(self, conn: Any, tenant: str, ref: str, purpose: str) -> StateEntry | None:
        row = conn.execute(
            select(consent_state).where(
                consent_state.c.tenant_id == tenant,
                consent_state.c.subject_ref == ref,
                consent_state.c.consent_type == purpose,
            )
        ).one_or_none()
        if row is None:
            return None
        return StateEntry(
            ConsentStatus(row.status), from_micros(row.effective_us), row.event_seq, row.consent_id
        )

    def receipt(self, tenant: str, hashed_id: str, consent_type: str) -> dict[str, Any]:
        check_hashed_id(hashed_id)
        now = self._clock.now()
        for _ in range(ON_DEMAND_ATTEMPTS):
            with read_tx(self._engine) as conn:
                catalogue = self._tenants.catalogue(tenant)
                if consent_type not in catalogue:
                    raise InvalidInput("unknown consent_type", field="consent_type")
                ref = self._links.resolve_hashed(conn, tenant, hashed_id)
                entry = self._state(conn, tenant, ref, consent_type)
                if entry is None:
                    raise NotFound("no consent has been recorded for this subject and purpose")
                # Read after the state row, so under READ COMMITTED it covers that row's leaf
                # when every commit signs one; otherwise it may not yet (see below).
                checkpoint = self._ledger.newest_checkpoint(conn, tenant)
                if checkpoint is not None and checkpoint.tree_size > entry.event_seq:
                    return self.issue(conn, tenant, hashed_id, consent_type, entry, checkpoint, now)
            # Checkpoints are signed by the workers (CONSENTGATE_CHECKPOINT_ON_COMMIT=false)
            # and the newest does not cover this leaf yet: sign the head now and read again.
            sign_tenant(self._engine, self._ledger, self._clock, tenant)
        raise StoreUnavailable("the ledger's newest events are not yet in a signed checkpoint")

    def receipts_for(
        self,
        conn: Connection,
        tenant: str,
        hashed_id: str,
        ref: str,
        checkpoint: SignedCheckpoint,
        now: datetime,
    ) -> dict[str, dict[str, Any]]:
        """A receipt per purpose the subject has a state for, all proved against
        ``checkpoint``, read through the caller's transaction (an audit export)."""
        rows = conn.execute(
            select(consent_state).where(
                consent_state.c.tenant_id == tenant, consent_state.c.subject_ref == ref
            )
        )
        entries = {
            row.consent_type: StateEntry(
                ConsentStatus(row.status),
                from_micros(row.effective_us),
                row.event_seq,
                row.consent_id,
            )
            for row in rows
        }
        return {
            purpose: self.issue(conn, tenant, hashed_id, purpose, entry, checkpoint, now)
            for purpose, entry in sorted(entries.items())
        }

    def issue(
        self,
        conn: Connection,
        tenant: str,
        hashed_id: str,
        consent_type: str,
        entry: StateEntry,
        checkpoint: SignedCheckpoint,
        now: datetime,
    ) -> dict[str, Any]:
        """Sign a receipt for ``entry`` with the leaf's proof against ``checkpoint``."""
        catalogue = self._tenants.catalogue(tenant)
        leaf, leaf_hash = self._ledger.entry(conn, tenant, entry.event_seq)
        size, _, hashes = self._ledger.inclusion_proof(
            conn, tenant, entry.event_seq, checkpoint.tree_size
        )
        purpose = catalogue.get(consent_type) or Purpose(consent_type)
        view = rules.view(entry, purpose.max_age, now)
        doc = parse_leaf(leaf)
        jti = str(uuid.uuid4())
        issued = int(now.timestamp())
        claims: dict[str, Any] = {
            "iss": self.issuer(tenant),
            "jti": jti,
            "iat": issued,
            "sub": hashed_id,
            "tenant": tenant,
            "consent_type": consent_type,
            "status": doc["status"],
            "state": view.status.value,
            "expires_at": None if view.expires_at is None else format_rfc3339(view.expires_at),
            "consent_timestamp": doc["timestamp"],
            "consent_id": doc["consent_id"],
            "ledger_origin": self._ledger.origin(tenant),
            "ledger_seq": entry.event_seq,
            "leaf_hash": leaf_hash.hex(),
            "cmp_version": doc.get("cmp_version"),
            "policy_version": doc.get("policy_version"),
            "collection_method": doc["source"],
            "jurisdiction": doc.get("jurisdiction"),
            "controller": {"name": tenant},
            "cmp_receipt": doc.get("cmp_receipt"),
            # Kantara Consent Receipt v1.1 (ISO/IEC TS 27560 lineage) fields that apply.
            "version": "KI-CR-v1.1.0",
            "consentReceiptID": jti,
            "consentTimestamp": int(parse_rfc3339(doc["timestamp"]).timestamp()),
            "collectionMethod": doc["source"],
            "piiPrincipalId": hashed_id,
            "piiControllers": [{"piiController": tenant, "onBehalf": False}],
            "language": "en",
            "services": [
                {
                    "service": consent_type,
                    "purposes": [
                        {
                            "purpose": purpose.description or consent_type,
                            "purposeCategory": [consent_type],
                            "consentType": "EXPLICIT",
                            "piiCategory": ["contact details (keyed hash of identifier)"],
                            "primaryPurpose": True,
                            "termination": "on withdrawal"
                            if purpose.max_age is None
                            else f"on withdrawal or after {purpose.max_age.days} days",
                            "thirdPartyDisclosure": False,
                        }
                    ],
                }
            ],
            "sensitive": False,
            "spiCat": [],
        }
        return {
            "receipt": sign_compact(self._keys, tenant, claims, RECEIPT_TYP),
            "leaf": leaf.decode("utf-8"),
            "inclusion_proof": {
                "seq": entry.event_seq,
                "tree_size": size,
                "hashes": [b64(h) for h in hashes],
            },
            "checkpoint": checkpoint.note,
        }

    def token(
        self,
        tenant: str,
        subject: HashedIdentifier | str,
        consent_type: str,
        ttl_seconds: int,
    ) -> dict[str, Any]:
        """A JWT stating a grant in force now, for edge checks; refused with a reason code."""
        if not 1 <= ttl_seconds <= int(MAX_TOKEN_TTL.total_seconds()):
            raise InvalidInput("ttl_seconds must be 1-900", field="ttl_seconds")
        now = self._clock.now()
        with read_tx(self._engine) as conn:
            catalogue = self._tenants.catalogue(tenant)
            if consent_type not in catalogue:
                raise InvalidInput("unknown consent_type", field="consent_type")
            if isinstance(subject, str):
                hashed_id = check_hashed_id(subject)
                ref = self._links.resolve_hashed(conn, tenant, hashed_id)
            else:
                found = self._links.find(conn, tenant, subject)
                if found is None:
                    raise ConsentRefused(
                        "no consent is recorded for this subject", reason="no_consent"
                    )
                ref, hashed_id = found
            entry = self._state(conn, tenant, ref, consent_type)
        view = None if entry is None else rules.view(entry, catalogue[consent_type].max_age, now)
        reason = consent_refusal(view, now)
        if reason is not None or view is None:
            code = reason.value if reason is not None else "no_consent"
            raise ConsentRefused(f"no {consent_type} grant in force ({code})", reason=code)
        issued = int(now.timestamp())
        expires = issued + ttl_seconds
        if view.expires_at is not None:
            expires = min(expires, int(view.expires_at.timestamp()))
        claims = {
            "iss": self.issuer(tenant),
            "sub": hashed_id,
            "jti": str(uuid.uuid4()),
            "consent_type": consent_type,
            "status": "granted",
            "ledger_seq": view.event_seq,
            "iat": issued,
            "nbf": issued,
            "exp": expires,
        }
        return {"token": sign_compact(self._keys, tenant, claims, "JWT"), "expires_at": expires}
