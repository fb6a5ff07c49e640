"""Ingest: validate consent events, append them to the ledger and move the state view, in
one transaction per request (a batch is all-or-nothing).

Order inside the transaction matters: the tenant's ledger head is locked first, so subject
creation, idempotency checks, seq assignment and the state update cannot interleave with
another writer of the same tenant.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, Engine

from consentgate.consent.cmp_settings import ReceiptPolicy
from consentgate.consent.subjects import HashedIdentifier, SubjectLinks, check_hashed_id
from consentgate.crypto.jws import JwsError, verify_with_jwks
from consentgate.domain import consent as rules
from consentgate.domain.clock import Clock
from consentgate.domain.consent import ConsentStatus, Purpose, Source, StateEntry
from consentgate.domain.identity import (
    Identifier,
    IdentifierKind,
    normalise_email,
    normalise_phone_bulk,
)
from consentgate.domain.timeutil import format_rfc3339, from_micros, parse_rfc3339, to_micros
from consentgate.errors import Conflict, InvalidInput
from consentgate.ledger.leaf import LeafEvent, content_fingerprint
from consentgate.ledger.store import LedgerStore, NewLeaf, b64
from consentgate.observability.metrics import Metrics
from consentgate.outbox import events as outbox_events
from consentgate.outbox.store import OutboxWriter
from consentgate.storage import lean
from consentgate.storage.engine import write_tx
from consentgate.tenants.service import TenantService


@dataclass(frozen=True, slots=True)
class EventInput:
    """One event as submitted. Exactly one of phone, email, hashed_id names the person."""

    consent_id: str
    consent_type: str
    status: str
    timestamp: str
    source: str = "api"
    phone: str | None = field(default=None, repr=False)
    email: str | None = field(default=None, repr=False)
    hashed_id: str | None = None
    cmp_version: str | None = None
    policy_version: str | None = None
    jurisdiction: str | None = None
    device: dict[str, Any] | None = None
    receipt: str | None = field(default=None, repr=False)
    # What a CMP adapter decoded this event from (e.g. the TC string), kept as evidence.
    evidence: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class IngestResult:
    event_id: str
    seq: int
    hashed_id: str
    leaf_hash: str
    created: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "seq": self.seq,
            "hashed_id": self.hashed_id,
            "leaf_hash": self.leaf_hash,
        }


@dataclass(slots=True)
class _Checked:
    """An event after validation, the identifier already reduced to its hashes."""

    index: int
    source: EventInput
    identity: HashedIdentifier | None
    status: ConsentStatus
    timestamp_us: int
    timestamp: str
    source_kind: Source
    subject_ref: str = ""
    hashed_id: str = ""
    cmp_receipt: dict[str, Any] | None = None
    where: str = ""  # the field prefix that names this event in errors ("events[3].")


def _utf8(text: str) -> bool:
    """JSON input can smuggle lone surrogates (``"\\ud800"``) that no UTF-8 leaf can hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Prepared:
    """A validated request, ready to be committed (alone or grouped with others)."""

    checked: list[_Checked]
    within: Callable[[Connection, list[IngestResult]], None] | None = None


# Runs once per commit, in its transaction, with the requests it holds.
Finish = Callable[[Connection, list[Prepared]], None]


class IngestService:
    def __init__(
        self,
        engine: Engine,
        tenants: TenantService,
        links: SubjectLinks,
        ledger: LedgerStore,
        clock: Clock,
        future_skew: timedelta = timedelta(minutes=5),
        receipt_policy: Callable[[str], ReceiptPolicy] | None = None,
        metrics: Metrics | None = None,
        outbox: OutboxWriter | None = None,
    ) -> None:
        self._metrics = metrics or Metrics()
        self._outbox = outbox
        self._receipt_policy = receipt_policy or (lambda _tenant: ReceiptPolicy())
        self._listeners: list[Callable[[str, list[tuple[str, str]]], None]] = []
        self._withdrawal_listeners: list[Callable[[str, list[tuple[str, str]]], object]] = []
        self._engine = engine
        self._tenants = tenants
        self._links = links
        self._ledger = ledger
        self._clock = clock
        self._skew = future_skew

    # -- validation (no I/O but the key store) -----------------------------------------------
    def _check(
        self, tenant: str, region: str | None, i: int, ev: EventInput, prefix: str
    ) -> _Checked:
        def f(name: str) -> str:
            return f"{prefix}{name}"

        for name in ("consent_id", "consent_type", "cmp_version", "policy_version", "jurisdiction"):
            value = getattr(ev, name)
            if value is not None and not _utf8(value):
                raise InvalidInput(f"{name} is not valid Unicode text", field=f(name))
        if ev.device is not None and not _utf8(json.dumps(ev.device, ensure_ascii=False)):
            raise InvalidInput("device is not valid Unicode text", field=f("device"))
        given = [n for n in ("phone", "email", "hashed_id") if getattr(ev, n) is not None]
        if len(given) != 1:
            raise InvalidInput(
                "exactly one of phone, email or hashed_id must name the person",
                field=f("phone"),
            )
        identity: Identifier | None = None
        if ev.phone is not None:
            # The compiled fast path (same answers as the full parse, ~8 µs instead of ~100).
            identity = normalise_phone_bulk(ev.phone, region, field=f("phone"))
        elif ev.email is not None:
            identity = normalise_email(ev.email, field=f("email"))
        else:
            check_hashed_id(str(ev.hashed_id), field=f("hashed_id"))
        if not ev.consent_id or len(ev.consent_id) > 200:
            raise InvalidInput("consent_id must be 1-200 characters", field=f("consent_id"))
        if (
            identity is not None
            and ev.source != Source.INBOUND_KEYWORD.value  # ours: a provider id or a digest
            and _names_the_person(ev.consent_id, identity)
        ):
            raise InvalidInput(
                "consent_id must not contain the person's phone number or e-mail address: "
                "it is kept as given in the append-only ledger",
                field=f("consent_id"),
            )
        try:
            status = ConsentStatus(ev.status)
        except ValueError:
            raise InvalidInput("status must be granted or withdrawn", field=f("status")) from None
        try:
            source = Source(ev.source)
        except ValueError:
            allowed = ", ".join(s.value for s in Source)
            raise InvalidInput(f"source must be one of {allowed}", field=f("source")) from None
        instant = parse_rfc3339(ev.timestamp, field=f("timestamp"))
        rules.check_not_future(instant, self._clock.now(), self._skew, field=f("timestamp"))
        return _Checked(
            where=prefix,
            index=i,
            source=ev,
            identity=None if identity is None else self._links.hash_identifier(tenant, identity),
            status=status,
            timestamp_us=to_micros(instant),
            timestamp=format_rfc3339(instant),
            source_kind=source,
        )

    # -- the transaction ---------------------------------------------------------------------
    def _check_receipts(self, tenant: str, checked: list[_Checked]) -> None:
        """Verify CMP-signed receipts; the leaf records the outcome and the CMP's key id
        (and the receipt's hash, not the receipt: its payload may name the person)."""
        if not any(c.source.receipt is not None for c in checked):
            policy = self._receipt_policy(tenant)
            if policy.required:
                raise InvalidInput(
                    "this tenant requires a CMP-signed receipt on every event",
                    field=checked[0].where + "receipt",
                )
            return
        policy = self._receipt_policy(tenant)
        for c in checked:
            where = c.where + "receipt"
            token = c.source.receipt
            if token is None:
                if policy.required:
                    raise InvalidInput("a CMP-signed receipt is required", field=where)
                continue
            verified, kid, problem = False, None, "no CMP keys are registered (PUT /v1/cmp/keys)"
            if policy.jwks is not None:
                try:
                    result = verify_with_jwks(token, policy.jwks)
                    kid = result.header.get("kid")
                    if result.claims.get("consent_id") == c.source.consent_id:
                        verified, problem = True, ""
                    else:
                        problem = "the receipt names another consent_id"
                except JwsError as exc:
                    problem = str(exc)
            if policy.required and not verified:
                raise InvalidInput(problem, field=where)
            c.cmp_receipt = {
                "verified": verified,
                "kid": kid,
                "sha256": hashlib.sha256(token.encode()).hexdigest(),
            }

    def ingest(
        self,
        tenant: str,
        region: str | None,
        events: list[EventInput],
        *,
        batch: bool,
        within: Callable[[Connection, list[IngestResult]], None] | None = None,
    ) -> list[IngestResult]:
        """Record ``events``; ``within`` runs in the same transaction once results are known
        (e.g. to remember a webhook delivery atomically with what it recorded)."""
        return self.commit(
            tenant, [self.prepare(tenant, region, events, batch=batch, within=within)]
        )[0]

    def add_listener(self, listener: Callable[[str, list[tuple[str, str]]], None]) -> None:
        """Called after each commit with the (subject_ref, purpose) pairs whose state changed
        (e.g. to evict the gate's cache before the request is acknowledged)."""
        self._listeners.append(listener)

    def add_withdrawal_listener(
        self, listener: Callable[[str, list[tuple[str, str]]], object]
    ) -> None:
        """Called after each commit, after the :meth:`add_listener` ones and before the
        answer, with the (subject_ref, purpose) pairs now withdrawn (e.g. to wait for the
        sends still in flight to them: :mod:`consentgate.gate.fence`)."""
        self._withdrawal_listeners.append(listener)

    def prepare(
        self,
        tenant: str,
        region: str | None,
        events: list[EventInput],
        *,
        batch: bool,
        within: Callable[[Connection, list[IngestResult]], None] | None = None,
    ) -> Prepared:
        """Everything that needs no transaction: validation, hashing, receipt checks."""
        prefix = "events[{}]." if batch else ""
        checked = [
            self._check(tenant, region, i, ev, prefix.format(i)) for i, ev in enumerate(events)
        ]
        self._check_receipts(tenant, checked)
        return Prepared(checked, within)

    def commit(
        self, tenant: str, requests: list[Prepared], finish: Finish | None = None
    ) -> list[list[IngestResult]]:
        """Record prepared requests in ONE transaction (one fsync, one checkpoint): all of
        them or, on any error, none. Results per request, in request order. ``finish`` runs
        once in the transaction, after each request's ``within``, with all of them (e.g. to
        store every answer in one statement)."""
        checked = [c for r in requests for c in r.checked]
        owner = [n for n, r in enumerate(requests) for _ in r.checked]
        # Re-index across requests; each event keeps its own ``where`` for error messages.
        checked = [dataclasses.replace(c, index=i) for i, c in enumerate(checked)]
        now = self._clock.now()
        now_us = to_micros(now)
        with write_tx(self._engine) as conn:
            head = self._ledger.lock_head(conn, tenant)
            catalogue = self._tenants.catalogue(tenant)
            for c in checked:
                if c.source.consent_type not in catalogue:
                    known = ", ".join(sorted(catalogue))
                    raise InvalidInput(
                        f"unknown consent_type; this tenant's purposes: {known}",
                        field=c.where + "consent_type",
                    )
            self._resolve_subjects(conn, tenant, checked, now_us)
            results: dict[int, IngestResult] = {}
            fresh: list[tuple[_Checked, LeafEvent]] = []
            seen: dict[str, tuple[bytes, int]] = {}
            existing = self._existing(conn, tenant, [c.source.consent_id for c in checked])
            received = format_rfc3339(now)
            for c in checked:
                leaf = LeafEvent(
                    tenant=tenant,
                    seq=head.tree_size + len(fresh),
                    event_id=str(uuid.uuid4()),
                    subject_ref=c.subject_ref,
                    consent_type=c.source.consent_type,
                    status=c.status.value,
                    timestamp=c.timestamp,
                    received_at=received,
                    consent_id=c.source.consent_id,
                    source=c.source_kind.value,
                    cmp_version=c.source.cmp_version,
                    policy_version=c.source.policy_version,
                    jurisdiction=c.source.jurisdiction,
                    device=c.source.device,
                    cmp_receipt=c.cmp_receipt,
                    evidence=c.source.evidence,
                )
                fingerprint = content_fingerprint(leaf.document())
                prior = existing.get(c.source.consent_id)
                if prior is not None:
                    if prior["content_hash"] != fingerprint:
                        raise Conflict(
                            "consent_id was already recorded with other content",
                            field=c.where + "consent_id",
                        )
                    results[c.index] = IngestResult(
                        prior["event_id"], prior["seq"], c.hashed_id, b64(prior["leaf_hash"]), False
                    )
                    continue
                if c.source.consent_id in seen:
                    if seen[c.source.consent_id][0] != fingerprint:
                        raise Conflict(
                            "consent_id appears twice in this batch with different content",
                            field=c.where + "consent_id",
                        )
                    continue  # resolved to the first occurrence below
                seen[c.source.consent_id] = (fingerprint, c.index)
                fresh.append((c, leaf))
            hashes: list[bytes] = []
            changed_keys: list[tuple[str, str]] = []
            if fresh:
                new_leaves = [
                    NewLeaf(
                        seq=leaf.seq,
                        event_id=leaf.event_id,
                        subject_ref=c.subject_ref,
                        consent_type=leaf.consent_type,
                        status=leaf.status,
                        ts_us=c.timestamp_us,
                        received_us=now_us,
                        consent_id=leaf.consent_id,
                        content_hash=seen[leaf.consent_id][0],
                        leaf=leaf.to_bytes(),
                    )
                    for c, leaf in fresh
                ]
                hashes, _ = self._ledger.append(conn, tenant, head, new_leaves, now_us)
                changed_keys, applied = self._update_state(conn, tenant, fresh, catalogue, now_us)
                if changed_keys and conn.dialect.name == "postgresql":
                    notify_changes(conn, tenant, changed_keys)
                if self._outbox is not None:
                    self._record_outbox(conn, tenant, fresh, applied, now_us)
            first_result: dict[str, IngestResult] = {}
            for (c, leaf), digest in zip(fresh, hashes, strict=True):
                result = IngestResult(leaf.event_id, leaf.seq, c.hashed_id, b64(digest), True)
                results[c.index] = result
                first_result[leaf.consent_id] = result
            for c in checked:
                if c.index not in results:  # a duplicate inside the batch
                    r = first_result[c.source.consent_id]
                    results[c.index] = IngestResult(
                        r.event_id, r.seq, c.hashed_id, r.leaf_hash, False
                    )
            per_request: list[list[IngestResult]] = [[] for _ in requests]
            for i in range(len(checked)):
                per_request[owner[i]].append(results[i])
            for request, answer in zip(requests, per_request, strict=True):
                if request.within is not None:
                    request.within(conn, answer)
            if finish is not None:
                finish(conn, requests)
        if changed_keys:
            for listener in self._listeners:
                listener(tenant, changed_keys)
            withdrawn = {
                (c.subject_ref, leaf.consent_type)
                for c, leaf in fresh
                if leaf.status == ConsentStatus.WITHDRAWN.value
            }
            now_withdrawn = [key for key in changed_keys if key in withdrawn]
            if now_withdrawn:
                for waiter in self._withdrawal_listeners:
                    waiter(tenant, now_withdrawn)
        self._metrics.consent_recorded(
            tenant,
            [(leaf.consent_type, leaf.status, leaf.source) for _, leaf in fresh],
            replayed=len(checked) - len(fresh),
        )
        return per_request

    def _resolve_subjects(
        self, conn: Connection, tenant: str, checked: list[_Checked], now_us: int
    ) -> None:
        by_identity = [c for c in checked if c.identity is not None]
        refs = self._links.resolve_or_create(
            conn, tenant, [c.identity for c in by_identity if c.identity is not None], now_us
        )
        for c, ref in zip(by_identity, refs, strict=True):
            assert c.identity is not None
            c.subject_ref, c.hashed_id = ref, c.identity.current
        by_hash = [c for c in checked if c.identity is None]
        if not by_hash:
            return
        known = self._links.known_hashed(conn, tenant, [str(c.source.hashed_id) for c in by_hash])
        for c in by_hash:
            c.hashed_id = str(c.source.hashed_id)
            if c.hashed_id not in known:
                raise InvalidInput(
                    "hashed_id names no known subject: record the first event by phone or email",
                    field=c.where + "hashed_id",
                )
            c.subject_ref = known[c.hashed_id]

    def _existing(
        self, conn: Connection, tenant: str, consent_ids: list[str]
    ) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        unique = sorted(set(consent_ids))
        for start in range(0, len(unique), 500):
            params: dict[str, Any] = {"t": tenant}
            marks = lean.placeholders("c", unique[start : start + 500], params)
            sql = (
                "SELECT consent_id, event_id, seq, leaf_hash, content_hash "  # noqa: S608
                f"FROM ledger_entries WHERE tenant_id = :t AND consent_id IN ({marks})"
            )
            for consent_id, event_id, seq, leaf_hash, content_hash in lean.rows(conn, sql, params):
                found[consent_id] = {
                    "event_id": event_id,
                    "seq": int(seq),
                    "leaf_hash": bytes(leaf_hash),
                    "content_hash": bytes(content_hash),
                }
        return found

    def _update_state(
        self,
        conn: Connection,
        tenant: str,
        fresh: list[tuple[_Checked, LeafEvent]],
        catalogue: dict[str, Purpose],
        now_us: int,
    ) -> tuple[list[tuple[str, str]], set[int]]:
        """Move the state view; return the keys whose state changed and the seqs of the
        events that became their key's state when applied (in ledger order)."""
        pairs = {(c.subject_ref, leaf.consent_type) for c, leaf in fresh}
        refs = sorted({ref for ref, _ in pairs})
        current: dict[tuple[str, str], StateEntry] = {}
        for start in range(0, len(refs), 500):
            # The subjects' rows (a subject has a handful of purposes), filtered here: one
            # primary-key range per subject on both engines, and a plain IN list.
            params: dict[str, Any] = {"t": tenant}
            marks = lean.placeholders("r", refs[start : start + 500], params)
            sql = (
                "SELECT subject_ref, consent_type, status, effective_us, event_seq, "  # noqa: S608
                f"consent_id FROM consent_state WHERE tenant_id = :t AND subject_ref IN ({marks})"
            )
            for ref, purpose, status, effective_us, event_seq, consent_id in lean.rows(
                conn, sql, params
            ):
                if (ref, purpose) in pairs:
                    current[(ref, purpose)] = StateEntry(
                        ConsentStatus(status), from_micros(effective_us), event_seq, consent_id
                    )
        changed: dict[tuple[str, str], StateEntry] = {}
        applied: set[int] = set()
        for c, leaf in fresh:
            key = (c.subject_ref, leaf.consent_type)
            candidate = StateEntry(c.status, from_micros(c.timestamp_us), leaf.seq, leaf.consent_id)
            winner = rules.apply(changed.get(key, current.get(key)), candidate)
            if winner is not None:
                changed[key] = winner
                applied.add(leaf.seq)
        if changed:
            upsert_state(conn, tenant, changed, catalogue, now_us)
        return sorted(changed), applied

    def _record_outbox(
        self,
        conn: Connection,
        tenant: str,
        fresh: list[tuple[_Checked, LeafEvent]],
        applied: set[int],
        now_us: int,
    ) -> None:
        """One ``consent.changed`` per newly recorded event, in this transaction."""
        assert self._outbox is not None
        self._outbox.record(
            conn,
            tenant,
            [
                outbox_events.consent_changed(
                    subject_ref=c.subject_ref,
                    hashed_id=c.hashed_id,
                    consent_type=leaf.consent_type,
                    status=leaf.status,
                    timestamp=leaf.timestamp,
                    cmp_version=leaf.cmp_version,
                    consent_id=leaf.consent_id,
                    ledger_seq=leaf.seq,
                    source=leaf.source,
                    state_changed=leaf.seq in applied,
                )
                for c, leaf in fresh
            ],
            now_us,
        )


def upsert_state(
    conn: Connection,
    tenant: str,
    entries: dict[tuple[str, str], StateEntry],
    catalogue: dict[str, Purpose],
    now_us: int,
) -> None:
    rows = []
    for (subject_ref, purpose), entry in entries.items():
        expiry = rules.expires_at(
            entry, catalogue[purpose].max_age if purpose in catalogue else None
        )
        rows.append(
            {
                "tenant_id": tenant,
                "subject_ref": subject_ref,
                "consent_type": purpose,
                "status": entry.status.value,
                "effective_us": to_micros(entry.effective_at),
                "event_seq": entry.event_seq,
                "consent_id": entry.consent_id,
                "expires_us": None if expiry is None else to_micros(expiry),
                "updated_us": now_us,
            }
        )
    lean.insert_rows(conn, "consent_state", _STATE_KEY + _STATE_VALUES, rows, _ON_STATE_CONFLICT)


# Same text on SQLite and PostgreSQL. A lean statement: built as an expression, it cost more
# than the rest of a single-event commit (the ``excluded`` namespace alone is rebuilt per use).
_STATE_KEY = ("tenant_id", "subject_ref", "consent_type")
_STATE_VALUES = ("status", "effective_us", "event_seq", "consent_id", "expires_us", "updated_us")
_ON_STATE_CONFLICT = f" ON CONFLICT ({', '.join(_STATE_KEY)}) DO UPDATE SET " + ", ".join(
    f"{c} = excluded.{c}" for c in _STATE_VALUES
)


CONSENT_CHANNEL = "consentgate_consent"


def notify_changes(conn: Connection, tenant: str, keys: list[tuple[str, str]]) -> None:
    """PostgreSQL NOTIFY, delivered to every listening process when the transaction commits.
    Payload lines are ``tenant subject_ref purpose`` (random refs: nothing personal), split
    to stay under the 8000-byte payload limit, after a first line ``@<microseconds>``: the
    wall clock just before the commit, from which listeners measure how long the change took
    to reach them (an upper bound: the commit is a little later)."""
    lines = [f"{tenant} {ref} {purpose}" for ref, purpose in keys]
    stamp = f"@{time.time_ns() // 1000}"
    chunk: list[str] = [stamp]
    size = len(stamp) + 1
    for line in lines:
        if size + len(line) + 1 > 7000:
            lean.rows(conn, _NOTIFY, {"c": CONSENT_CHANNEL, "p": "\n".join(chunk)})
            chunk, size = [stamp], len(stamp) + 1
        chunk.append(line)
        size += len(line) + 1
    if len(chunk) > 1:
        lean.rows(conn, _NOTIFY, {"c": CONSENT_CHANNEL, "p": "\n".join(chunk)})


_NOTIFY = "SELECT pg_notify(:c, :p)"


# A run of digits with the separators people put in numbers; letters end a run.
_DIGIT_RUN = re.compile(r"[0-9][0-9 ()./+\-]*")
_NON_DIGITS = re.compile(r"\D")


def _names_the_person(consent_id: str, identity: Identifier) -> bool:
    """Whether a CMP's ``consent_id`` carries the event's own phone number or e-mail address.

    The id is kept verbatim in the ledger, which is append-only (an erasure cannot reach it):
    an id built from the number would put the number on disk for good. A phone number counts
    when its last eight digits appear in one run of the id's digits and the separators
    people write numbers with (``+44 7911 123456``, ``07911123456``, ``447911123456-sms``;
    letters end a run, so a hex digest does not match by accident); an address when it
    appears, in any case."""
    if identity.kind is IdentifierKind.EMAIL:
        return identity.value.lower() in consent_id.lower()
    tail = _NON_DIGITS.sub("", identity.value)[-8:]
    return len(tail) == 8 and any(
        tail in _NON_DIGITS.sub("", run) for run in _DIGIT_RUN.findall(consent_id)
    )
