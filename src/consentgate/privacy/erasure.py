"""Erasure of one subject (GDPR Art. 17): unlink the ledger from the person, keep the proofs.

The ledger knows people only as random ``subject_ref``s; the links from keyed hashes to that
ref are the one bridge to a person. Erasure deletes every link (all salt versions) and
everything else that is the person's or derived from their identifier, in ONE transaction
under the tenant's ledger head lock (so no ingest, device registration or second erasure can
interleave), and records the erasure itself as a ledger leaf (status ``erased``, purpose
``*``) with its signed checkpoint. The leaves stay, so every proof and checkpoint still
verifies; nothing left in the database ties them to the number.

What goes, per table:

* ``subject_links``: deleted (every salt version). ``consent_state``: deleted (replay drops
  the subject at the erasure leaf, so ``ledger verify`` agrees). ``devices``: deleted.
* ``campaign_recipients``: the hashed id and the sealed number go; a recipient not yet
  dispatched becomes ``skipped`` with reason ``erased``.
* ``messages`` (send decisions): kept for aggregate reports, with every link cut: the
  ``subject_ref``; the request hash (a digest over the hashed id); the client's idempotency
  key (free text); the consent leaf's seq, the device key id and the provider's message id
  (the provider's own records map those to the number).
* ``webhook_receipts``: the cached answers to CMP webhooks name hashed ids; scrubbed.
* ``analytics_conversions``: join tokens are HMACs of the hashed id; the subject's are deleted.
* outbox events of the subject: handed to the outbox (``erase_subject``). Then, in the same
  transaction, the ``subject.erased`` notice for the CRM/CMP endpoints (Art. 17(2)/19): the
  subject's hashed ids only, under a random order key, and only if an endpoint subscribes.

After the commit the gate's cache is evicted (other processes through NOTIFY, sent in the
transaction) and the deleted bytes are pushed out of the files (:mod:`privacy.scrub`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    delete,
    insert,
    literal,
    select,
    update,
)

from consentgate.consent.ingest import notify_changes
from consentgate.consent.subjects import SubjectLinks, check_hashed_id
from consentgate.crypto.keystore import KeyStore
from consentgate.delivery.settle import close_if_finished
from consentgate.domain import consent as rules
from consentgate.domain.clock import Clock
from consentgate.domain.consent import Source
from consentgate.domain.reasons import ReasonCode
from consentgate.domain.timeutil import format_rfc3339, to_micros
from consentgate.gate.fence import SendFence
from consentgate.gate.gate import ConsentGate
from consentgate.ledger.leaf import LeafEvent, content_fingerprint
from consentgate.ledger.store import Head, LedgerStore, NewLeaf
from consentgate.privacy.scrub import StorageScrubber
from consentgate.storage.engine import write_tx
from consentgate.storage.tables import (
    analytics_conversions,
    campaign_recipients,
    consent_state,
    devices,
    erasures,
    messages,
    revocable_messages,
    subject_links,
    webhook_receipts,
)
from consentgate.tenants.service import TenantService

log = logging.getLogger("consentgate.privacy")

# (conn, tenant, subject_ref, hashed_ids) → outbox events removed (with their deliveries);
# runs inside the erasure's transaction.
OutboxEraser = Callable[[Connection, str, str, list[str]], int]
# (conn, tenant, hashed_ids, now_us) → deliveries of the erasure notice queued (0: none
# subscribes, nothing stored); runs inside the erasure's transaction, after OutboxEraser.
ErasureNotifier = Callable[[Connection, str, list[str], int], int]
# (keystore, tenant, month, hashed_ids) → the month's join tokens of those ids.
JoinTokens = Callable[[KeyStore, str, str, list[str]], list[str]]

SCRUBBED_HASH = bytes(32)
CHUNK = 500


@dataclass(frozen=True, slots=True)
class ErasureReport:
    ledger_seq: int
    tree_size: int
    counts: dict[str, int]
    storage: dict[str, Any]
    notified_endpoints: int = 0  # endpoints the subject.erased notice is queued for

    def as_dict(self) -> dict[str, Any]:
        return {
            "erased": True,
            "ledger_seq": self.ledger_seq,
            "tree_size": self.tree_size,
            "counts": self.counts,
            "notified_endpoints": self.notified_endpoints,
            "storage": self.storage,
        }


def scrub_messages(conn: Connection, tenant: str, which: ColumnElement[bool]) -> int:
    """Cut every link of the selected send decisions to their subject (see the module doc).
    The row keeps what aggregates need: purpose, template, campaign, action, mode, reason,
    status and times."""
    return int(
        conn.execute(
            update(messages)
            .where(messages.c.tenant_id == tenant, which)
            .values(
                subject_ref=None,
                request_hash=SCRUBBED_HASH,
                idempotency_key=literal("erased:") + messages.c.id,
                consent_seq=None,
                device_kid=None,
                provider_message_id=None,
            )
        ).rowcount
    )


def scrub_json(value: Any, secrets_: set[str]) -> Any:
    """``value`` with every string equal to one of ``secrets_`` replaced by None."""
    if isinstance(value, str):
        return None if value in secrets_ else value
    if isinstance(value, list):
        return [scrub_json(v, secrets_) for v in value]
    if isinstance(value, dict):
        return {k: scrub_json(v, secrets_) for k, v in value.items()}
    return value


class ErasureService:
    def __init__(
        self,
        engine: Engine,
        tenants: TenantService,
        links: SubjectLinks,
        ledger: LedgerStore,
        gate: ConsentGate,
        keystore: KeyStore,
        clock: Clock,
        scrubber: StorageScrubber,
        *,
        outbox: OutboxEraser | None = None,
        notify: ErasureNotifier | None = None,
        join_tokens: JoinTokens | None = None,
        fence: SendFence | None = None,
    ) -> None:
        self._fence = fence
        self._engine = engine
        self._tenants = tenants
        self._links = links
        self._ledger = ledger
        self._gate = gate
        self._keys = keystore
        self._clock = clock
        self._scrubber = scrubber
        self._outbox = outbox
        self._notify = notify
        self._join_tokens = join_tokens

    def erase(self, tenant: str, hashed_id: str) -> ErasureReport:
        """Erase the subject ``hashed_id`` names (NotFound if none, in this tenant)."""
        check_hashed_id(hashed_id)
        now = self._clock.now()
        now_us = to_micros(now)
        catalogue = set(self._tenants.catalogue(tenant))
        with write_tx(self._engine) as conn:
            head = self._ledger.lock_head(conn, tenant)
            ref = self._links.resolve_hashed(conn, tenant, hashed_id)
            hashes = sorted(
                conn.execute(
                    select(subject_links.c.hashed_id).where(
                        subject_links.c.tenant_id == tenant, subject_links.c.subject_ref == ref
                    )
                ).scalars()
            )
            purposes = set(
                conn.execute(
                    select(consent_state.c.consent_type).where(
                        consent_state.c.tenant_id == tenant, consent_state.c.subject_ref == ref
                    )
                ).scalars()
            )
            counts = self._delete(conn, tenant, ref, hashes, now_us)
            notified = 0 if self._notify is None else self._notify(conn, tenant, hashes, now_us)
            seq, tree_size = self._record(conn, tenant, head, ref, now_us, format_rfc3339(now))
            keys = sorted((ref, p) for p in catalogue | purposes)
            if conn.dialect.name == "postgresql":
                notify_changes(conn, tenant, keys)
        self._gate.on_changes(tenant, keys)
        if self._fence is not None:  # like a withdrawal: no send in flight outlives the answer
            self._fence.wait_for_sends(tenant, keys)
        touched = [name for name, n in counts.items() if n] + ["subject_links"]
        if counts["outbox_events"]:
            touched.append("outbox_deliveries")
        storage = self._scrubber.after_delete(touched)
        log.info("erased a subject of tenant %s (ledger seq %d)", tenant, seq)
        return ErasureReport(seq, tree_size, counts, storage, notified)

    def _delete(
        self, conn: Connection, tenant: str, ref: str, hashes: list[str], now_us: int
    ) -> dict[str, int]:
        counts: dict[str, int] = {}

        def gone(table: Any, *where: ColumnElement[bool]) -> int:
            return int(
                conn.execute(delete(table).where(table.c.tenant_id == tenant, *where)).rowcount
            )

        counts["subject_links"] = gone(subject_links, subject_links.c.subject_ref == ref)
        counts["consent_state"] = gone(consent_state, consent_state.c.subject_ref == ref)
        counts["devices"] = gone(devices, devices.c.subject_ref == ref)
        # Sealed numbers kept so a withdrawal could revoke the subject's undelivered messages.
        counts["revocable_messages"] = gone(
            revocable_messages, revocable_messages.c.subject_ref == ref
        )
        recipients, message_ids = self._recipients(conn, tenant, hashes, now_us)
        counts["campaign_recipients"] = recipients
        by_recipient = sorted(message_ids)
        counts["messages"] = scrub_messages(conn, tenant, messages.c.subject_ref == ref)
        for start in range(0, len(by_recipient), CHUNK):
            # Decisions with no subject at the time (e.g. skipped before any consent) are
            # reached through their recipient row; their request hash is the hashed id's.
            counts["messages"] += scrub_messages(
                conn, tenant, messages.c.id.in_(by_recipient[start : start + CHUNK])
            )
        counts["webhook_receipts"] = self._webhook_receipts(conn, tenant, hashes)
        counts["analytics_conversions"] = self._conversions(conn, tenant, hashes)
        counts["outbox_events"] = (
            0 if self._outbox is None else self._outbox(conn, tenant, ref, hashes)
        )
        return counts

    def _recipients(
        self, conn: Connection, tenant: str, hashes: list[str], now_us: int
    ) -> tuple[int, set[str]]:
        """Clear the subject's queued identifiers; not-yet-dispatched ones are skipped."""
        if not hashes:
            return 0, set()
        mine = (campaign_recipients.c.tenant_id == tenant) & campaign_recipients.c.hashed_id.in_(
            hashes
        )
        rows = conn.execute(
            select(
                campaign_recipients.c.campaign_id,
                campaign_recipients.c.state,
                campaign_recipients.c.message_id,
            ).where(mine)
        ).all()
        if not rows:
            return 0, set()
        conn.execute(
            update(campaign_recipients)
            .where(mine, campaign_recipients.c.state != "done")
            .values(
                state="done",
                action="skipped",
                reason=ReasonCode.ERASED.value,
                mode=None,
            )
        )
        conn.execute(
            update(campaign_recipients)
            .where(mine)
            .values(hashed_id=None, sealed=None, wrapped_key=None)
        )
        close_if_finished(conn, {r.campaign_id for r in rows if r.state != "done"}, now_us)
        return len(rows), {r.message_id for r in rows if r.message_id is not None}

    def _webhook_receipts(self, conn: Connection, tenant: str, hashes: list[str]) -> int:
        """Rewrite cached CMP webhook answers that name one of ``hashes`` (a scan of the
        tenant's answers, which retention keeps to ``outbox_days``)."""
        secrets_ = set(hashes)
        changed = 0
        for hashed in hashes:
            rows = conn.execute(
                select(webhook_receipts.c.webhook_id, webhook_receipts.c.response).where(
                    webhook_receipts.c.tenant_id == tenant,
                    webhook_receipts.c.response.contains(hashed, autoescape=True),
                )
            ).all()
            for row in rows:
                text = row.response
                with contextlib.suppress(ValueError):
                    text = json.dumps(scrub_json(json.loads(text), secrets_))
                for secret in secrets_:  # anything the structure did not show
                    text = text.replace(secret, "")
                conn.execute(
                    update(webhook_receipts)
                    .where(
                        webhook_receipts.c.tenant_id == tenant,
                        webhook_receipts.c.webhook_id == row.webhook_id,
                    )
                    .values(response=text)
                )
                changed += 1
        return changed

    def _conversions(self, conn: Connection, tenant: str, hashes: list[str]) -> int:
        if self._join_tokens is None or not hashes:
            return 0
        months = conn.execute(
            select(analytics_conversions.c.month)
            .where(analytics_conversions.c.tenant_id == tenant)
            .distinct()
        ).scalars()
        removed = 0
        for month in list(months):
            tokens = self._join_tokens(self._keys, tenant, month, hashes)
            removed += int(
                conn.execute(
                    delete(analytics_conversions).where(
                        analytics_conversions.c.tenant_id == tenant,
                        analytics_conversions.c.month == month,
                        analytics_conversions.c.token.in_(tokens),
                    )
                ).rowcount
            )
        return removed

    def _record(
        self, conn: Connection, tenant: str, head: Head, ref: str, now_us: int, now_text: str
    ) -> tuple[int, int]:
        """Append the erasure leaf (and its checkpoint) and log the erased ref."""
        leaf = LeafEvent(
            tenant=tenant,
            seq=head.tree_size,
            event_id=str(uuid.uuid4()),
            subject_ref=ref,
            consent_type=rules.ALL_PURPOSES,
            status=rules.ERASED,
            timestamp=now_text,
            received_at=now_text,
            consent_id=f"erasure:{uuid.uuid4()}",
            source=Source.API.value,
        )
        new = NewLeaf(
            seq=leaf.seq,
            event_id=leaf.event_id,
            subject_ref=ref,
            consent_type=leaf.consent_type,
            status=leaf.status,
            ts_us=now_us,
            received_us=now_us,
            consent_id=leaf.consent_id,
            content_hash=content_fingerprint(leaf.document()),
            leaf=leaf.to_bytes(),
        )
        self._ledger.append(conn, tenant, head, [new], now_us)
        conn.execute(
            insert(erasures).values(
                tenant_id=tenant, subject_ref=ref, ledger_seq=leaf.seq, erased_us=now_us
            )
        )
        return leaf.seq, leaf.seq + 1  # the tree size that holds the erasure
