"""Withdrawal reaches messages already on their way: queued campaign recipients are skipped and
messages a provider holds undelivered are revoked (RBM ``agentMessages.delete``).

The queue is durable because it is the ledger itself: the revoker keeps, per tenant, the next
ledger seq it has not read (``revocation_cursors``). In one transaction it reads the
withdrawals past the cursor, and for each subject and purpose whose state is *still*
withdrawn (a later re-grant wins) it marks the subject's revocable messages ``revoke``, settles
its queued recipients of campaigns for that purpose as ``skipped``/``withdrawn`` (their
numbers purged), and moves the cursor. A crash before the commit leaves the cursor where it
was; after it, the marks are there. Then the marked messages are revoked at the provider, one
claim (a lease in ``due_us``) at a time, and each outcome is recorded on the message: status
``revoked`` and a ``revoked`` event, or a ``revoke_late`` event (delivered first), or
``revoke_failed`` after :data:`MAX_ATTEMPTS` (retried with backoff while the provider is
unavailable).

A withdrawal racing a send is covered from both sides: a message recorded as sent before the
revoker reads the withdrawal is found by it; one recorded after is caught by the sender's own
second look at consent once its decision is stored (:func:`revoke_if_withdrawn`).

Numbers are held only for revocable messages (sealed, see ``revocable_messages``) and dropped
when the message is delivered, revoked, or after :data:`HOLD` (a message undelivered for a
week is not worth withdrawing; RBM expires undelivered messages itself).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, Engine

from consentgate.crypto.keystore import KeyStore
from consentgate.delivery import bulk
from consentgate.delivery.providers.base import Provider, ProviderError, ProviderUnavailable
from consentgate.delivery.sealed import unseal_number
from consentgate.domain.clock import Clock
from consentgate.domain.timeutil import to_micros
from consentgate.errors import ConsentGateError
from consentgate.gate.gate import ConsentGate
from consentgate.storage import lean
from consentgate.storage.engine import read_tx, write_tx

log = logging.getLogger("consentgate.revocation")

#: Providers whose undelivered messages can be withdrawn by id (and number).
REVOCABLE = frozenset({"rbm"})
HOLD = timedelta(days=7)
MAX_ATTEMPTS = 6
LEASE = timedelta(seconds=60)
SCAN = 5_000  # ledger leaves read per tenant per pass
SCAN_EVERY = 0.25  # seconds between ledger reads in the dispatch loop

_HOLD_COLUMNS = (
    "message_id",
    "tenant_id",
    "subject_ref",
    "consent_type",
    "provider",
    "provider_message_id",
    "context",
    "sealed",
    "wrapped_key",
    "state",
    "attempts",
    "due_us",
    "created_us",
)
_BEHIND = (
    "SELECT h.tenant_id, h.tree_size, c.next_seq FROM ledger_heads h "
    "LEFT JOIN revocation_cursors c ON c.tenant_id = h.tenant_id "
    "WHERE c.next_seq IS NULL OR c.next_seq < h.tree_size"
)
_WITHDRAWN_LEAVES = (
    "SELECT DISTINCT subject_ref, consent_type FROM ledger_entries WHERE tenant_id = :t "
    "AND seq >= :lo AND seq < :hi AND status = 'withdrawn'"
)
_CURSOR = "SELECT next_seq FROM revocation_cursors WHERE tenant_id = :t"
_CURSOR_FOR_UPDATE = _CURSOR + " FOR UPDATE"
_DUE = (
    "SELECT message_id, tenant_id, provider, provider_message_id, context, sealed, "
    "wrapped_key, attempts FROM revocable_messages WHERE state = 'revoke' "
    "AND due_us <= :now ORDER BY due_us LIMIT :n"
)
_ANY_DUE = "SELECT 1 FROM revocable_messages WHERE state = 'revoke' AND due_us <= :now LIMIT 1"
_MARK = (
    "UPDATE revocable_messages SET state = 'revoke', due_us = :now "
    "WHERE tenant_id = :t AND subject_ref = :r AND consent_type = :p AND state = 'held'"
)
_QUEUED_CAMPAIGNS = (
    "SELECT DISTINCT campaign_id FROM campaign_recipients WHERE tenant_id = :t "
    "AND hashed_id = :h AND state = 'queued' AND campaign_id IN "
    "(SELECT id FROM campaigns WHERE tenant_id = :t AND consent_type = :p)"
)
_CLOSE = (
    "UPDATE campaigns SET status = 'done', updated_us = :now WHERE id = :c "
    "AND status != 'done' AND NOT EXISTS "
    "(SELECT 1 FROM campaign_recipients WHERE campaign_id = :c AND state != 'done')"
)
_SKIP_QUEUED = (
    "UPDATE campaign_recipients SET state = 'done', action = 'skipped', reason = 'withdrawn', "
    "sealed = NULL, wrapped_key = NULL WHERE tenant_id = :t AND hashed_id = :h "
    "AND state = 'queued' AND campaign_id IN "
    "(SELECT id FROM campaigns WHERE tenant_id = :t AND consent_type = :p)"
)


def hold(
    conn: Connection,
    tenant: str,
    rows: Sequence[tuple[str, str, str, str, str, str, bytes, bytes]],
    now_us: int,
) -> None:
    """Keep sent messages revocable: (message_id, subject_ref, consent_type, provider,
    provider_message_id, context, sealed, wrapped_key) each; in the caller's transaction."""
    bulk.insert_rows(
        conn,
        "revocable_messages",
        _HOLD_COLUMNS,
        [
            dict(zip(_HOLD_COLUMNS, (r[0], tenant, *r[1:], "held", 0, now_us, now_us), strict=True))
            for r in rows
        ],
        skip_conflicts=True,
    )


def revoke_if_withdrawn(
    engine: Engine,
    gate: ConsentGate,
    tenant: str,
    consent_type: str,
    sent: Sequence[tuple[str, str]],
    now_us: int,
) -> int:
    """The sender's second look, once its sends are stored: (message_id, subject_ref) of
    revocable messages whose consent no longer holds are marked ``revoke``."""
    if not sent:
        return 0
    verdicts = gate.check_many(tenant, [ref for _, ref in sent], consent_type)
    stale = [mid for mid, ref in sent if not verdicts[ref].allowed]
    if stale:
        with write_tx(engine) as conn:
            lean.many(
                conn,
                "UPDATE revocable_messages SET state = 'revoke', due_us = :now "
                "WHERE message_id = :id AND state = 'held'",
                [{"id": mid, "now": now_us} for mid in stale],
            )
    return len(stale)


class Revoker:
    def __init__(
        self,
        engine: Engine,
        keystore: KeyStore,
        providers: Sequence[Provider],
        clock: Clock,
    ) -> None:
        self._engine = engine
        self._keys = keystore
        self._providers = {p.name: p for p in providers}
        self._clock = clock
        self._next_scan = 0.0

    def _now(self) -> int:
        return to_micros(self._clock.now())

    def run_once(self, limit: int = 200, *, paced: bool = False) -> int:
        """Read new withdrawals, revoke what they marked; return how much work was done.
        ``paced`` (the dispatch loop): read the ledger at most every :data:`SCAN_EVERY`, so a
        busy ingest does not meet a revoker's write transaction every few milliseconds."""
        done = 0
        if not paced or time.monotonic() >= self._next_scan:
            self._next_scan = time.monotonic() + SCAN_EVERY
            done += self._scan()
        done += self._revoke(limit)
        self._expire()
        return done

    # -- withdrawals → marks ----------------------------------------------------------------

    def _scan(self) -> int:
        with read_tx(self._engine) as conn:
            behind = lean.rows(conn, _BEHIND, {})
        marked = 0
        for tenant, _, _ in behind:
            marked += self._scan_tenant(str(tenant))
        return marked

    def _scan_tenant(self, tenant: str) -> int:
        now = self._now()
        with write_tx(self._engine) as conn:
            lean.run(
                conn,
                "INSERT INTO revocation_cursors (tenant_id, next_seq) VALUES (:t, 0) "
                "ON CONFLICT DO NOTHING",
                {"t": tenant},
            )
            pg = conn.dialect.name == "postgresql"
            ((lo,),) = lean.rows(conn, _CURSOR_FOR_UPDATE if pg else _CURSOR, {"t": tenant})
            ((size,),) = lean.rows(
                conn, "SELECT tree_size FROM ledger_heads WHERE tenant_id = :t", {"t": tenant}
            )
            hi = min(int(size), int(lo) + SCAN)
            if hi <= lo:
                return 0
            pairs = lean.rows(conn, _WITHDRAWN_LEAVES, {"t": tenant, "lo": lo, "hi": hi})
            still = self._still_withdrawn(conn, tenant, pairs)
            marked = 0
            touched: set[str] = set()
            for ref, purpose in still:
                marked += lean.run(conn, _MARK, {"t": tenant, "r": ref, "p": purpose, "now": now})
                for (hashed_id,) in lean.rows(
                    conn,
                    "SELECT hashed_id FROM subject_links WHERE tenant_id = :t AND subject_ref = :r",
                    {"t": tenant, "r": ref},
                ):
                    params = {"t": tenant, "h": hashed_id, "p": purpose}
                    touched.update(c for (c,) in lean.rows(conn, _QUEUED_CAMPAIGNS, params))
                    marked += lean.run(conn, _SKIP_QUEUED, params)
            for campaign_id in touched:  # a campaign whose last open recipients went
                lean.run(conn, _CLOSE, {"c": campaign_id, "now": now})
            lean.run(
                conn,
                "UPDATE revocation_cursors SET next_seq = :hi WHERE tenant_id = :t",
                {"t": tenant, "hi": hi},
            )
        return marked

    @staticmethod
    def _still_withdrawn(
        conn: Connection, tenant: str, pairs: Sequence[tuple[Any, ...]]
    ) -> list[tuple[str, str]]:
        still = []
        for ref, purpose in pairs:
            rows = lean.rows(
                conn,
                "SELECT status FROM consent_state WHERE tenant_id = :t AND subject_ref = :r "
                "AND consent_type = :p",
                {"t": tenant, "r": ref, "p": purpose},
            )
            if rows and rows[0][0] == "withdrawn":
                still.append((str(ref), str(purpose)))
        return still

    # -- marks → provider calls -------------------------------------------------------------

    def _revoke(self, limit: int) -> int:
        now = self._now()
        lease = now + int(LEASE.total_seconds() * 1_000_000)
        with read_tx(self._engine) as conn:  # an idle pass takes no write lock
            if not lean.rows(conn, _ANY_DUE, {"now": now}):
                return 0
        with write_tx(self._engine) as conn:
            pg = conn.dialect.name == "postgresql"
            due = lean.rows(
                conn, _DUE + (" FOR UPDATE SKIP LOCKED" if pg else ""), {"now": now, "n": limit}
            )
            lean.many(
                conn,
                "UPDATE revocable_messages SET due_us = :lease, attempts = attempts + 1 "
                "WHERE message_id = :id",
                [{"id": row[0], "lease": lease} for row in due],
            )
        for row in due:
            self._revoke_one(*row)
        return len(due)

    def _revoke_one(
        self,
        message_id: str,
        tenant: str,
        provider_name: str,
        provider_message_id: str,
        context: str,
        sealed: bytes,
        wrapped: bytes,
        attempts: int,
    ) -> None:
        provider = self._providers.get(provider_name)
        outcome: str | None
        try:
            if provider is None:
                raise ProviderUnavailable(f"no provider {provider_name}")
            to = unseal_number(self._keys, tenant, context, bytes(sealed), bytes(wrapped))
            outcome = "revoked" if provider.revoke(provider_message_id, to=to) else "revoke_late"
        except ProviderUnavailable as exc:
            log.warning("revocation: provider unavailable (%s)", exc.code)
            outcome = "revoke_failed" if attempts + 1 >= MAX_ATTEMPTS else None
        except (ProviderError, ConsentGateError, ValueError) as exc:
            log.warning("revocation: could not revoke (%s)", type(exc).__name__)
            outcome = "revoke_failed"
        now = self._now()
        with write_tx(self._engine) as conn:
            if outcome is None:  # try again later, with backoff
                backoff = int(2**attempts * 1_000_000)
                lean.run(
                    conn,
                    "UPDATE revocable_messages SET due_us = :due WHERE message_id = :id",
                    {"id": message_id, "due": now + backoff},
                )
                return
            lean.run(
                conn, "DELETE FROM revocable_messages WHERE message_id = :id", {"id": message_id}
            )
            if outcome == "revoked":
                lean.run(
                    conn,
                    "UPDATE messages SET status = 'revoked', updated_us = :now "
                    "WHERE id = :id AND status IN ('sent', 'failed')",
                    {"id": message_id, "now": now},
                )
            lean.run(
                conn,
                "INSERT INTO message_events (id, tenant_id, message_id, kind, at_us) "
                "VALUES (:e, :t, :id, :k, :now)",
                {"e": str(uuid.uuid4()), "t": tenant, "id": message_id, "k": outcome, "now": now},
            )

    def _expire(self) -> None:
        """Drop the numbers of messages held longer than :data:`HOLD` (never revoked)."""
        cutoff = self._now() - int(HOLD.total_seconds() * 1_000_000)
        with read_tx(self._engine) as conn:
            old = lean.rows(
                conn,
                "SELECT 1 FROM revocable_messages WHERE state = 'held' AND created_us < :c LIMIT 1",
                {"c": cutoff},
            )
        if old:
            with write_tx(self._engine) as conn:
                lean.run(
                    conn,
                    "DELETE FROM revocable_messages WHERE state = 'held' AND created_us < :c",
                    {"c": cutoff},
                )


__all__ = ["HOLD", "MAX_ATTEMPTS", "REVOCABLE", "Revoker", "hold", "revoke_if_withdrawn"]
