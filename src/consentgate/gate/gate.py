"""On-send consent checks and the set-based campaign pre-filter.

``check`` answers from the TTL cache when it can and from the store otherwise; a withdrawal
evicts the entry before the request is acknowledged in the process that took it and in this
host's other processes (shared generation counters, :mod:`consentgate.gate.generations`),
and in processes on other hosts through PostgreSQL ``LISTEN/NOTIFY``
(:mod:`consentgate.gate.notify`). If the
store cannot answer (down, timeout, an ambiguous record), the answer is "no" with reason
``store_unavailable`` or ``ambiguous`` — never a send on a guess.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Connection, Engine, select, text
from sqlalchemy.exc import SQLAlchemyError

from consentgate.domain.clock import Clock
from consentgate.domain.consent import ConsentStatus
from consentgate.domain.reasons import ReasonCode
from consentgate.domain.timeutil import from_micros, to_micros
from consentgate.errors import ConsentGateError
from consentgate.gate import prefilter as prefilter_plans
from consentgate.gate.cache import CachedState, StateCache
from consentgate.observability.metrics import Metrics
from consentgate.storage.engine import read_tx
from consentgate.storage.tables import consent_state

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


_NO_CONSENT = GateDecision(False, ReasonCode.NO_CONSENT, None)
_STORE_UNAVAILABLE = GateDecision(False, ReasonCode.STORE_UNAVAILABLE, None)
_GRANTED = ConsentStatus.GRANTED.value
_WITHDRAWN = ConsentStatus.WITHDRAWN.value


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
        """IngestService listener: evict what a commit just changed, here and (through the
        shared generations) in this host's other processes."""
        self.cache.changed([(tenant, ref, purpose) for ref, purpose in keys])

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

    def check_many(
        self, tenant: str, subject_refs: Iterable[str], purpose: str
    ) -> dict[str, GateDecision]:
        """The on-send check for a dispatch batch: each subject's state read from the store
        (not the cache: a batch costs one statement anyway, and the store is never stale),
        in one set-based read, judged at one instant. The store failing denies them all
        (``store_unavailable``); a subject without a state row has no consent."""
        refs = list(dict.fromkeys(subject_refs))
        decisions = dict.fromkeys(refs, _NO_CONSENT)
        if not refs:
            return decisions
        try:
            with read_tx(self._engine) as conn:
                self._bounded(conn)
                for start in range(0, len(refs), 900):
                    chunk = refs[start : start + 900]
                    found = conn.execute(
                        select(
                            consent_state.c.subject_ref,
                            consent_state.c.status,
                            consent_state.c.event_seq,
                            consent_state.c.expires_us,
                        ).where(
                            consent_state.c.tenant_id == tenant,
                            consent_state.c.consent_type == purpose,
                            consent_state.c.subject_ref.in_(chunk),
                        )
                    )
                    for ref, status, seq, expires_us in found:
                        expires = None if expires_us is None else from_micros(int(expires_us))
                        state = CachedState(status, expires, int(seq))
                        decisions[ref] = self._judge(state, False)
        except (ConsentGateError, SQLAlchemyError, OSError) as exc:
            log.warning(
                "consent store unavailable for a batch check (%s): failing closed",
                type(exc).__name__,
            )
            decisions = dict.fromkeys(refs, _STORE_UNAVAILABLE)
        counts: dict[ReasonCode | None, int] = {}
        for decision in decisions.values():
            counts[decision.reason] = counts.get(decision.reason, 0) + 1
        for reason, n in counts.items():
            self._metrics.gate_checked(tenant, reason, None, n)
        return decisions

    def prefilter(
        self,
        tenant: str,
        hashed_ids: Iterable[str],
        purpose: str,
        *,
        plan: prefilter_plans.Plan | None = None,
    ) -> dict[str, GateDecision]:
        """One set-based query for a whole audience (hashed ids), never a query per
        recipient: a temporary table joined to the links and states, or the tenant's joined
        rows streamed into an in-memory hash join, whichever is cheaper for the sizes
        (:mod:`consentgate.gate.prefilter`; ``plan`` forces one). Every id gets a decision,
        judged at one instant; the store failing denies them all (``store_unavailable``)."""
        decisions = dict.fromkeys(hashed_ids, _NO_CONSENT)
        if not decisions:
            return decisions
        counts: dict[str | None, int] = {}
        try:
            with read_tx(self._engine) as conn, prefilter_plans.paused_gc():
                self._bounded(conn, self._prefilter_timeout_ms)
                found = prefilter_plans.rows(conn, tenant, purpose, decisions.keys(), plan)
                counts = self._prefilter_judge(found, decisions)
        except (ConsentGateError, SQLAlchemyError, OSError) as exc:
            log.warning(
                "consent store unavailable for a pre-filter (%s): failing closed",
                type(exc).__name__,
            )
            self._metrics.gate_prefiltered(
                tenant, {ReasonCode.STORE_UNAVAILABLE.value: len(decisions)}
            )
            return dict.fromkeys(decisions, _STORE_UNAVAILABLE)
        self._metrics.gate_prefiltered(tenant, counts)
        return decisions

    def _prefilter_judge(
        self, rows: Iterable[prefilter_plans.Row], decisions: dict[str, GateDecision]
    ) -> dict[str | None, int]:
        """:meth:`_judge`'s rule on raw rows, in place (ids without a row keep no_consent),
        with the expiry compared in microseconds at one instant. Returns counts by reason."""
        now_us = to_micros(self._clock.now())
        counts: dict[str | None, int] = {}
        matched = 0
        for hashed_id, status, seq, expires_us in rows:
            if hashed_id not in decisions:
                continue  # streamed: a subject outside this audience
            seq = int(seq)
            if status == _WITHDRAWN:
                decision = GateDecision(False, ReasonCode.WITHDRAWN, seq)
            elif status != _GRANTED:
                decision = GateDecision(False, ReasonCode.AMBIGUOUS, seq)
            elif expires_us is not None and now_us >= int(expires_us):
                decision = GateDecision(False, ReasonCode.EXPIRED, seq)
            else:
                decision = GateDecision(True, None, seq)
            decisions[hashed_id] = decision
            counts[decision.reason] = counts.get(decision.reason, 0) + 1
            matched += 1
        counts[ReasonCode.NO_CONSENT] = len(decisions) - matched
        return counts
