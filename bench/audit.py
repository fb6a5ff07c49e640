"""Figures 12-13: the point-in-time audit over a 1,000,000-event ledger, and one subject's
export bundle with 1,000 events.

The ledger is built by the proof bench's bulk loader (``proofs.build_tree``: the leaf and
node rows LedgerStore.append would write, through the driver's bulk path, the last batch
through LedgerStore.append itself, which signs the checkpoint), with leaves that look like a
year of consent: 250,000 subjects, four purposes, random timestamps, 20 % withdrawals, each
received up to three days after it was given. Every subject has a hashed-id link.

``audit_as_of``: the whole answer for one purpose (``status=all``: every subject's state) at
an instant mid-year, through ``AuditService.consents_stream`` — the code behind
``GET /v1/audit/consents`` with ``Accept: text/csv`` — counted as it streams. Baseline: the
service's own statement run once on the bare driver, every row fetched (the gap is the
service's Python: SQLAlchemy, expiry by ``rules.view``, the records); the two answers are
compared. Floor ≤ 10 s.

``audit_export``: a subject given 1,000 events through ``core.ingest.ingest`` (on top of the
1M-leaf ledger), 200 sends citing its grants and 400 delivery events (rows as the send path
writes them), exported with ``core.exports.export``; every timed bundle is verified offline
(``verify_bundle``: 1,000 proofs, receipts, the 200 sends). Baseline: the leaves and the
nodes of their 1,000 proofs read with the bare driver (no receipts, no signing, no JSON).
"""

from __future__ import annotations

import hashlib
import re
import statistics
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert

from bench import data, proofs
from bench.backends import LINK_COLUMNS, Backend
from bench.common import Figure
from bench.config import Sizes
from consentgate.audit import pointintime, verify_bundle
from consentgate.audit.pointintime import AsOfQuery, StatusFilter
from consentgate.bootstrap import App
from consentgate.consent.ingest import EventInput
from consentgate.crypto.signing import public_jwk
from consentgate.domain.consent import DEFAULT_PURPOSES
from consentgate.domain.timeutil import format_rfc3339, to_micros
from consentgate.ledger import merkle
from consentgate.ledger.store import NewLeaf
from consentgate.storage.engine import write_tx
from consentgate.storage.tables import message_events, messages

TENANT = "audit"
FLOOR_S = 10.0
PURPOSE = "marketing_rcs"
YEAR_START = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp())
YEAR_S = 365 * 86_400
AS_OF = datetime(2025, 7, 1, tzinfo=UTC)
_MIX = 0x9E3779B97F4A7C15
_LEAF = (
    '{"consent_id":"%s","consent_type":"%s","event_id":"%s","received_at":"%s","seq":%d,'
    '"source":"web","status":"%s","subject_ref":"%s","tenant":"audit","timestamp":"%s","v":1}'
)


def _rfc3339(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _subject_ref(subject: int) -> str:
    h = f"{(subject * 2654435761 + 12345) % (1 << 128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-8{h[17:20]}-{h[20:]}"


def _hashed_id(subject: int) -> str:
    return hashlib.sha256(f"audit-subject-{subject}".encode()).hexdigest()


def year_of_consent(subjects: int) -> proofs.LeafMaker:
    """Leaves [start, start + count): canonical (sorted-key, compact) JSON made by formatting,
    each event's fields drawn from a hash of its seq, so any range can be made alone."""
    purposes = [p.name for p in DEFAULT_PURPOSES]

    def make(start: int, count: int, _received_us: int) -> Iterator[NewLeaf]:
        sha256 = hashlib.sha256
        for seq in range(start, start + count):
            x = ((seq + 1) * _MIX) & ((1 << 64) - 1)
            subject = x % subjects
            purpose = purposes[(x >> 20) & 3]
            status = "withdrawn" if (x >> 24) % 5 == 0 else "granted"
            ts = YEAR_START + (x >> 28) % YEAR_S
            received = ts + (x >> 12) % (3 * 86_400)
            ref = _subject_ref(subject)
            consent_id = f"aud-{seq:09d}"
            event_id = str(uuid.UUID(int=x << 64 | seq, version=4))
            leaf = (
                _LEAF
                % (
                    consent_id,
                    purpose,
                    event_id,
                    _rfc3339(received),
                    seq,
                    status,
                    ref,
                    _rfc3339(ts),
                )
            ).encode()
            yield NewLeaf(
                seq=seq,
                event_id=event_id,
                subject_ref=ref,
                consent_type=purpose,
                status=status,
                ts_us=ts * 1_000_000,
                received_us=received * 1_000_000,
                consent_id=consent_id,
                content_hash=sha256(leaf).digest(),
                leaf=leaf,
            )

    return make


def _links(backend: Backend, subjects: int, now_us: int) -> None:
    conn = backend.connect()
    try:
        for start in range(0, subjects, 50_000):
            rows = [
                (TENANT, _hashed_id(s), 1, _subject_ref(s), now_us)
                for s in range(start, min(subjects, start + 50_000))
            ]
            backend.begin(conn)
            backend.bulk_insert(conn, "subject_links", LINK_COLUMNS, rows)
            backend.commit(conn)
    finally:
        conn.close()


def _baseline(backend: Backend, conn: Any, as_of_us: int) -> tuple[str, dict[str, Any]]:
    """The service's own statement for the whole answer (``pointintime``), in the driver's
    parameter style, with the same source hint on SQLite: what the figure would be if the
    service added nothing to the database's work."""
    source = ""
    if backend.name == "sqlite":
        pk = [r[1] for r in conn.execute("PRAGMA index_list(ledger_entries)") if r[3] == "pk"]
        source = f' INDEXED BY "{pk[0]}"'
    sql = str(pointintime._winners_sql(backend.name, False, False, None, source).text)
    if backend.name == "postgresql":
        sql = re.sub(r":(\w+)", r"%(\1)s", sql)
    params = {
        "t": TENANT,
        "ct": PURPOSE,
        "g": "granted",
        "w": "withdrawn",
        "erased": pointintime.ERASED,
        "every": pointintime.ALL_PURPOSES,
        "as_of": as_of_us,
        "after": "",
    }
    return sql, params


def _timed(fn: Any, runs: int) -> tuple[list[float], Any]:
    times, result = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return times, result


def run_as_of(backend: Backend, core: App, sizes: Sizes) -> tuple[Figure, dict[str, Any]]:
    leaves, subjects = sizes.audit_events, sizes.audit_subjects
    build = proofs.build_tree(
        backend, core, leaves, sizes, tenant=TENANT, make=year_of_consent(subjects)
    )
    now_us = to_micros(core.clock.now())
    t0 = time.perf_counter()
    _links(backend, subjects, now_us)
    build["links_seconds"] = round(time.perf_counter() - t0, 2)
    build["statistics"] = backend.analyze() or "as the service left them"

    purpose = core.tenants.catalogue(TENANT)[PURPOSE]
    assert purpose.max_age is not None
    as_of_us = to_micros(AS_OF)

    def answer(status: StatusFilter, known_at_us: int | None = None) -> dict[str, int]:
        query = AsOfQuery(PURPOSE, as_of_us, known_at_us, status, purpose.max_age)
        counts: dict[str, int] = {}
        for state in core.audit.consents_stream(TENANT, query, None, None):
            counts[state.status.value] = counts.get(state.status.value, 0) + 1
        return counts

    answer(StatusFilter.ALL)  # warm-up, excluded
    times, counts = _timed(lambda: answer(StatusFilter.ALL), sizes.audit_runs)
    granted_times, granted = _timed(lambda: answer(StatusFilter.GRANTED), 1)
    known_times, known = _timed(lambda: answer(StatusFilter.ALL, as_of_us), 1)
    query = AsOfQuery(PURPOSE, as_of_us, None, StatusFilter.ALL, purpose.max_age)
    pages_t0, pages, cursor, listed = time.perf_counter(), 0, None, 0
    while True:
        page = core.audit.consents_page(TENANT, query, cursor, 10_000)
        pages, listed, cursor = pages + 1, listed + len(page["subjects"]), page["next_cursor"]
        if cursor is None:
            break
    pages_s = time.perf_counter() - pages_t0
    if listed != sum(counts.values()):
        raise RuntimeError("the paged answer differs from the streamed one")

    conn = backend.connect()
    try:
        sql, params = _baseline(backend, conn, as_of_us)
        conn.execute(sql, params).fetchall()  # warm-up
        raw_times, rows = _timed(lambda: conn.execute(sql, params).fetchall(), sizes.audit_runs)
        plan = backend.explain(conn, sql, params)
    finally:
        conn.close()
    service = {
        (s.subject_ref, s.seq)
        for s in core.audit.consents_stream(TENANT, query, None, None)  # untimed
    }
    if service != {(row[0], int(row[3])) for row in rows}:
        raise RuntimeError("the service's answer differs from its statement's on the bare driver")

    value, base = statistics.median(times), statistics.median(raw_times)
    details = {
        "ledger": build,
        "events": leaves,
        "subjects": subjects,
        "query": f"{PURPOSE} as of {format_rfc3339(AS_OF)}, status=all, whole answer streamed",
        "answer": dict(sorted(counts.items())),
        "runs_s": [round(t, 3) for t in times],
        "baseline_runs_s": [round(t, 3) for t in raw_times],
        "status_granted_s": round(granted_times[0], 3),
        "status_granted_subjects": sum(granted.values()),
        "known_at_equal_as_of_s": round(known_times[0], 3),
        "known_at_answer": dict(sorted(known.items())),
        "json_pages_of_10000_s": round(pages_s, 3),
        "json_pages": pages,
        "baseline_plan": plan,
        "same_answer": "service and bare statement return the same (subject, seq) set",
    }
    figure = Figure(
        backend.name,
        "audit_as_of",
        f"as_of audit over {leaves:,} ledger events (one purpose, every subject)",
        "s",
        value=value,
        baseline_title="the same statement, bare driver, all rows fetched",
        baseline=base,
        floor=FLOOR_S,
        floor_kind="max",
        details=details,
    )
    return figure, {"tree_size": leaves}


def _subject_history(count: int, now: datetime) -> list[EventInput]:
    purposes = [p.name for p in DEFAULT_PURPOSES]
    phone = data.phone_numbers(1, seed=99)[0]
    out = []
    for k in range(count):
        x = ((k + 7) * _MIX) & ((1 << 64) - 1)
        ts = now - timedelta(seconds=(x >> 8) % (300 * 86_400))
        out.append(
            EventInput(
                consent_id=f"export-{k:05d}",
                consent_type=purposes[(x >> 40) & 3],
                status="withdrawn" if (x >> 44) % 5 == 0 else "granted",
                timestamp=format_rfc3339(ts.replace(microsecond=0)),
                source="web",
                phone=phone,
            )
        )
    return out


def run_export(backend: Backend, core: App, sizes: Sizes) -> Figure:
    now = core.clock.now()
    events = _subject_history(sizes.export_events, now)
    results = []
    for start in range(0, len(events), 1000):
        results += core.ingest.ingest(TENANT, "GB", events[start : start + 1000], batch=True)
    hashed_id = results[0].hashed_id
    state = core.queries.by_hashed_id(TENANT, hashed_id).consents
    granted = [(p, v.event_seq) for p, v in sorted(state.items()) if v.status.value == "granted"]
    if not granted:
        raise RuntimeError("the export subject has no grant in force")
    with write_tx(core.engine) as conn:
        ref = core.links.resolve_hashed(conn, TENANT, hashed_id)
        sent_from = to_micros(core.clock.now())  # after every event was received
        rows, evs = [], []
        for i in range(sizes.export_sends):
            purpose, seq = granted[i % len(granted)]
            message_id = str(uuid.UUID(int=i + 1, version=4))
            at = sent_from + i * 1_000
            rows.append(
                {
                    "id": message_id,
                    "tenant_id": TENANT,
                    "idempotency_key": f"export-send-{i}",
                    "request_hash": hashlib.sha256(message_id.encode()).digest(),
                    "subject_ref": ref,
                    "consent_type": purpose,
                    "template_id": "bench-template",
                    "campaign_id": None,
                    "action": "sent",
                    "mode": "native_e2ee",
                    "reason": None,
                    "device_kid": None,
                    "consent_seq": seq,
                    "provider": "rbm",
                    "provider_message_id": message_id,
                    "status": "read",
                    "created_us": at,
                    "updated_us": at + 2_000,
                }
            )
            for n, kind in enumerate(("delivered", "read")):
                evs.append(
                    {
                        "id": str(uuid.UUID(int=(i + 1) << 8 | n, version=4)),
                        "tenant_id": TENANT,
                        "message_id": message_id,
                        "kind": kind,
                        "at_us": at + (n + 1) * 1_000,
                    }
                )
        conn.execute(insert(messages), rows)
        conn.execute(insert(message_events), evs)
    jwks = {"keys": [public_jwk(k.public_key, k.kid) for k in core.keystore.signing_keys(TENANT)]}
    verifiers = core.ledger.verifier_keys(TENANT)

    core.exports.export(TENANT, hashed_id)  # warm-up
    times, verify_times, size = [], [], 0
    for _ in range(sizes.export_runs):
        t0 = time.perf_counter()
        raw = core.exports.export(TENANT, hashed_id)
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        summary = verify_bundle(raw, jwks, verifiers)
        verify_times.append(time.perf_counter() - t0)
        size = len(raw)
        if summary.leaves != len(events) or summary.sends_checked != sizes.export_sends:
            raise RuntimeError(f"the bundle does not hold what was recorded: {summary}")

    seqs = [r.seq for r in results]
    conn = backend.connect()
    try:
        raw_times, _ = _timed(
            lambda: _raw_export_reads(backend, conn, ref, seqs), sizes.export_runs
        )
    finally:
        conn.close()
    value, base = statistics.median(times), statistics.median(raw_times)
    return Figure(
        backend.name,
        "audit_export",
        f"export of one subject with {len(events):,} events, s",
        "s",
        value=value,
        baseline_title="its leaves + proof nodes, bare driver",
        baseline=base,
        details={
            "events": len(events),
            "sends": sizes.export_sends,
            "delivery_events": len(evs),
            "tree_size": summary.tree_size,
            "bundle_bytes": size,
            "runs_s": [round(t, 3) for t in times],
            "baseline_runs_s": [round(t, 3) for t in raw_times],
            "verify_bundle_offline_s": [round(t, 3) for t in verify_times],
            "verified": f"every timed bundle: {summary.leaves} inclusion proofs, "
            f"{summary.receipts} receipts, {summary.sends_checked} sends in force",
            "sends_written": "200 message rows citing the subject's grants, 2 events each, "
            "inserted as the send path writes them (no provider in the bench)",
        },
    )


def _raw_export_reads(backend: Backend, conn: Any, ref: str, seqs: list[int]) -> int:
    p = backend.param
    backend.begin(conn)
    size = int(
        conn.execute(
            f"SELECT tree_size FROM ledger_heads WHERE tenant_id = {p}", (TENANT,)
        ).fetchone()[0]
    )
    leaves = conn.execute(
        f"SELECT seq, leaf FROM ledger_entries WHERE tenant_id = {p} AND subject_ref = {p} "
        "ORDER BY seq",
        (TENANT, ref),
    ).fetchall()
    coords: set[merkle.Coord] = set()
    for seq in seqs:
        coords |= merkle.plan_coords(merkle.inclusion_proof_plan(seq, size))
    by_level: dict[int, list[int]] = {}
    for level, idx in coords:
        by_level.setdefault(level, []).append(idx)
    fetched = 0
    for level, idxs in by_level.items():
        for start in range(0, len(idxs), 2000):
            chunk = idxs[start : start + 2000]
            marks = ", ".join([p] * len(chunk))
            if level == 0:
                sql = (
                    "SELECT seq, leaf_hash FROM ledger_entries WHERE tenant_id = "
                    f"{p} AND seq IN ({marks})"
                )
                fetched += len(conn.execute(sql, (TENANT, *chunk)).fetchall())
            else:
                sql = (
                    f"SELECT idx, hash FROM ledger_nodes WHERE tenant_id = {p} AND level = {p} "
                    f"AND idx IN ({marks})"
                )
                fetched += len(conn.execute(sql, (TENANT, level, *chunk)).fetchall())
    backend.commit(conn)
    return fetched + len(leaves)


def run(backend: Backend, core: App, sizes: Sizes) -> list[Figure]:
    figure, _ = run_as_of(backend, core, sizes)
    return [figure, run_export(backend, core, sizes)]
