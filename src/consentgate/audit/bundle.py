"""The audit export bundle's format and the pure rules its offline check applies.

A bundle is one RFC 8785 JSON document (``docs/audit-bundle.md``). Its parts prove
themselves in different ways: leaves by inclusion proofs against one signed checkpoint,
receipts by their own JWS, and what is not in the ledger (sends, delivery events, purpose
rules) by the bundle signature — an EdDSA JWS whose claims hold the SHA-256 of the canonical
bundle without its ``signature`` member. Because the file must be exactly the canonical
bytes, no byte of it can change without some check failing.

:func:`send_in_force` is the rule a send is held to: the leaf it cites is a grant for its
purpose, not expired and not superseded by a withdrawal that was both effective and known
before the send. A withdrawal timestamped before the send but received after it could not
have stopped the send; it is reported as a late withdrawal, not as a failure.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from consentgate.domain.consent import ConsentStatus, Precedence
from consentgate.domain.timeutil import from_micros
from consentgate.ledger.leaf import canonical

FORMAT = "consentgate-audit-bundle/1"
SIGNATURE_TYP = "consentgate-audit-bundle+jwt"


def digest(bundle: dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical bundle without its ``signature`` member."""
    body = {k: v for k, v in bundle.items() if k != "signature"}
    return hashlib.sha256(canonical(body)).hexdigest()


@dataclass(frozen=True, slots=True)
class LeafFacts:
    """What the send rule needs from one leaf."""

    seq: int
    consent_type: str
    status: str
    ts_us: int
    received_us: int
    consent_id: str

    @property
    def is_decision(self) -> bool:
        return self.status in (ConsentStatus.GRANTED.value, ConsentStatus.WITHDRAWN.value)

    def precedence(self) -> Precedence:
        return Precedence(from_micros(self.ts_us), ConsentStatus(self.status), self.consent_id)


@dataclass(frozen=True, slots=True)
class InForce:
    """The verdict on one send: ``problem`` is None when the grant was in force."""

    problem: str | None
    late_withdrawals: tuple[int, ...] = ()


def send_in_force(
    at_us: int,
    purpose: str,
    grant: LeafFacts,
    leaves: list[LeafFacts],
    max_age: timedelta | None,
    future_skew: timedelta,
) -> InForce:
    """Was ``grant`` a grant for ``purpose`` in force at ``at_us``, given the subject's
    ``leaves``? A grant may be timestamped up to ``future_skew`` after the send (ingest
    accepts clocks that far ahead, and the state rule takes it as it is)."""
    if grant.consent_type != purpose:
        return InForce(f"its consent leaf {grant.seq} is for {grant.consent_type}, not {purpose}")
    if grant.status != ConsentStatus.GRANTED.value:
        return InForce(f"its consent leaf {grant.seq} is a {grant.status}, not a grant")
    skew_us = int(future_skew.total_seconds() * 1_000_000)
    if grant.ts_us > at_us + skew_us:
        return InForce(f"its consent leaf {grant.seq} is timestamped after the send")
    if max_age is not None and at_us >= grant.ts_us + int(max_age.total_seconds() * 1_000_000):
        return InForce(f"its consent leaf {grant.seq} had expired before the send")
    late: list[int] = []
    mine = grant.precedence()
    for leaf in leaves:
        if (
            leaf.consent_type != purpose
            or leaf.status != ConsentStatus.WITHDRAWN.value
            or leaf.ts_us > at_us
            or not leaf.precedence().supersedes(mine)
        ):
            continue
        if leaf.received_us <= at_us:
            return InForce(
                f"leaf {leaf.seq} withdrew {purpose} before the send, superseding leaf {grant.seq}"
            )
        late.append(leaf.seq)
    return InForce(None, tuple(late))
