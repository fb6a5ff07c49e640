"""On-send consent checks and the set-based campaign pre-filter.

``check`` answers from the TTL cache when it can and from the store otherwise; a withdrawal
evicts the entry in the process that took it before the request is acknowledged, and in every
other process through PostgreSQL ``LISTEN/NOTIFY`` (:mod:`consentgate.gate.notify`). If the
store cannot answer (down, timeout, an ambiguous record), the answer is "no" with reason
``store_unavailable`` or ``ambiguous`` — never a send on a guess.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

from consentgate.domain.clock import Clock
from consentgate.domain.consent import ConsentStatus
from consentgate.domain.reasons import ReasonCode
from consentgate.domain.timeutil import from_micros
from consentgate.errors import ConsentGateError
from consentgate.gate.cache import CachedState, StateCache
from consentgate.observability.metrics import Metrics
from consentgate.storage.engine import read_tx

log = logging.getLogger("consentgate.gate")

_STATE = text(
    "SELECT status, event_seq, expires_us FROM consent_state "
    "WHERE tenant_id = :t AND subject_ref = :r AND consent_type = :p"
)


@dataclass(frozen=True, slots=True)
class GateDecision:
    allowed: bool
    reason: ReasonCode | None
    consent_seq: int | None
    from_cache: bool = False


class ConsentGate:
    def __init__(
        self,
        engine: Engine,
        clock: Clock,
        cache: StateCache,
        statement_timeout: timedelta = timedelta(milliseconds=500),
        prefilter_timeout: timedelta = timedelta(minutes=5),
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics or Metrics()
        # One check must answer fast or not at all; a pre-filter joins a whole audience.
        self._prefilter_timeout_ms = int(prefilter_timeout.total_seconds() * 1000)
        self._engine = engine
        self._clock = clock
        self.cache = cache
        self._timeout_ms = int(statement_timeout.total_seconds() * 1000)

    def on_changes(self, tenant: str, keys: list[tuple[str, str]]) -> None:
        """IngestService listener: evict what a commit just changed."""
        for ref, purpose in keys:
            self.cache.evict((tenant, ref, purpose))

    def _judge(self, state: CachedState, from_cache: bool) -> GateDecision:
        if state.status is None:
            return GateDecision(False, ReasonCode.NO_CONSENT, None, from_cache)
        if state.status == ConsentStatus.WITHDRAWN.value:
            return GateDecision(False, ReasonCode.WITHDRAWN, state.consent_seq, from_cache)
        if state.status != ConsentStatus.GRANTED.value:
            return GateDecision(False, ReasonCode.AMBIGUOUS, state.consent_seq, from_cache)
        if state.expires_at is not None and self._clock.now() >= state.expires_at:
            return GateDecision(False, ReasonCode.EXPIRED, state.consent_seq, from_cache)
        return GateDecision(True, None, state.consent_seq, from_cache)

    def _bounded(self, conn: Connection, timeout_ms: int | None = None) -> None:
        if conn.dialect.name == "postgresql":
            ms = int(self._timeout_ms if timeout_ms is None else timeout_ms)
            conn.execute(text(f"SET LOCAL statement_timeout = {ms}"))

    def check(self, tenant: str, subject_ref: str, purpose: str) -> GateDecision:
        decision = self._check(tenant, subject_ref, purpose)
        self._metrics.gate_checked(tenant, decision.reason, decision.from_cache)
        return decision

    def _check(self, tenant: str, subject_ref: str, purpose: str) -> GateDecision:
        key = (tenant, subject_ref, purpose)
        cached = self.cache.get(key)
        if cached is not None:
            return self._judge(cached, True)
        token = self.cache.token(key)
        try:
            with read_tx(self._engine) as conn:
                self._bounded(conn)
                rows = conn.execute(_STATE, {"t": tenant, "r": subject_ref, "p": purpose}).all()
        except (ConsentGateError, SQLAlchemyError, OSError) as exc:
            log.warning(
                "consent store unavailable for a check (%s): failing closed", type(exc).__name__
            )
            return GateDecision(False, ReasonCode.STORE_UNAVAILABLE, None)
        if len(rows) > 1:
            return GateDecision(False, ReasonCode.AMBIGUOUS, None)
        state = (
            CachedState(None, None, None)
            if not rows
            else CachedState(
                rows[0].status,
                None if rows[0].expires_us is None else from_micros(int(rows[0].expires_us)),
                int(rows[0].event_seq),
            )
        )
        self.cache.put(key, state, token)
        return self._judge(state, False)

    def prefilter(
        self, tenant: str, hashed_ids: Iterable[str], purpose: str
    ) -> dict[str, GateDecision]:
        """One set-based query for a whole audience (hashed ids): a temporary table joined to
        the links and the state view; never a query per recipient. Every id gets a decision;
        the store failing denies them all (``store_unavailable``)."""
        ids = list(dict.fromkeys(hashed_ids))
        table = f"audience_{uuid.uuid4().hex[:12]}"
        decisions = {h: GateDecision(False, ReasonCode.NO_CONSENT, None) for h in ids}
        try:
            with read_tx(self._engine) as conn:
                self._bounded(conn, self._prefilter_timeout_ms)
                conn.execute(
                    text(f"CREATE TEMPORARY TABLE {table} (hashed_id VARCHAR(64) PRIMARY KEY)")
                )
                for start in range(0, len(ids), 10_000):
                    conn.execute(
                        text(f"INSERT INTO {table} (hashed_id) VALUES (:h)"),  # noqa: S608
                        [{"h": h} for h in ids[start : start + 10_000]],
                    )
                rows = conn.execute(
                    text(
                        f"SELECT a.hashed_id, s.status, s.event_seq, s.expires_us FROM {table} a "  # noqa: S608
                        "JOIN subject_links l ON l.tenant_id = :t AND l.hashed_id = a.hashed_id "
                        "JOIN consent_state s ON s.tenant_id = l.tenant_id "
                        "AND s.subject_ref = l.subject_ref AND s.consent_type = :p"
                    ),
                    {"t": tenant, "p": purpose},
                ).all()
                conn.execute(text(f"DROP TABLE {table}"))
        except (ConsentGateError, SQLAlchemyError, OSError) as exc:
            log.warning(
                "consent store unavailable for a pre-filter (%s): failing closed",
                type(exc).__name__,
            )
            self._metrics.gate_prefiltered(tenant, {ReasonCode.STORE_UNAVAILABLE.value: len(ids)})
            return {h: GateDecision(False, ReasonCode.STORE_UNAVAILABLE, None) for h in ids}
        for row in rows:
            state = CachedState(
                row.status,
                None if row.expires_us is None else from_micros(int(row.expires_us)),
                int(row.event_seq),
            )
            decisions[row.hashed_id] = self._judge(state, False)
        counts: dict[str | None, int] = {}
        for d in decisions.values():
            counts[d.reason] = counts.get(d.reason, 0) + 1
        self._metrics.gate_prefiltered(tenant, counts)
        return decisions
