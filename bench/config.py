"""Sizes of a run: full by default, scaled by ``BENCH_SCALE`` or ``--scale``/``--quick``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sizes:
    batch_size: int = 1000
    warmup_batches: int = 1
    batches: int = 20
    subjects: int = 10_000
    lookups: int = 20_000
    lookup_warmup: int = 1_000
    lookup_seconds: float = 20.0  # time cap on the timed service lookups (count is recorded)
    http_workers: int = 4
    http_seconds: float = 5.0
    http_warmup_seconds: float = 1.0
    http_max_requests: int = 200_000  # per worker and phase: the loop is bounded in count too
    proof_leaves: int = 1_000_000
    proof_leaves_pg: int = 1_000_000
    tree_batch: int = 10_000
    tree_build: str = "bulk"  # or "append": LedgerStore.append for every batch
    proofs: int = 1_000
    proof_warmup: int = 10
    proof_seconds: float = 30.0  # time cap on the timed service proofs (count is recorded)
    proof_diag: int = 10  # proofs re-run with the service's SQL through the bare driver
    webhook_workers: int = 8  # concurrent client processes, one delivery in flight each
    webhook_batch: int = 50  # events per delivery in the batched variant
    webhook_seconds: float = 5.0
    webhook_warmup_seconds: float = 1.0
    webhook_max_deliveries: int = 100_000  # per worker and variant
    webhook_phones: int = 10_000  # distinct subjects the deliveries cycle through
    webhook_baseline_events: int = 30_000  # cap on the in-process replay (count is recorded)
    receipt_subjects: int = 5_000
    receipts: int = 3_000
    receipt_warmup: int = 200
    receipt_seconds: float = 5.0  # time cap on the timed receipts (count is recorded)
    tcf_seconds: float = 2.5  # per string kind and per path (decoder, baseline)
    tcf_warmup_passes: int = 200  # passes over the fixture strings, excluded
    gate_subjects: int = 1_000  # subjects whose state the warm cache holds
    gate_checks: int = 1_000_000  # warm checks (cycling over the subjects), bounded in time too
    gate_cold_checks: int = 5_000  # cold checks (cache cleared before each), bounded in time
    gate_seconds: float = 3.0  # time cap per timed loop of the gate phase
    envelope_seals: int = 3_000  # per variant, in rounds that alternate the variants
    envelope_warmup: int = 200  # per variant, excluded
    envelope_rounds: int = 5
    prefilter_audience: int = 1_000_000  # hashed ids handed to core.gate.prefilter
    prefilter_subjects: int = 200_000  # of them with consent state in the store
    prefilter_ingested: int = 1_000  # of those, recorded through core.ingest.ingest (the rest
    # are bulk-loaded as the same rows: see bench/prefilter.py)
    prefilter_normalise: int = 50_000  # raw numbers normalised (timed); the rest extrapolated
    # When core.gate.prefilter fails closed (PostgreSQL: its statement timeout), time it again
    # with a ConsentGate whose timeout lets it finish (off by default: ~40 s at 1M on PG).
    prefilter_relaxed_rerun: bool = False
    campaign_recipients: int = 2_000
    campaign_warmup: int = 100  # recipients of an untimed warm-up campaign
    campaign_workers: int = 4  # client processes of the direct POST /v1/messages baseline
    campaign_timeout_seconds: float = 300.0  # wait for "done" at most this long
    audit_events: int = 1_000_000  # ledger events the point-in-time audit recomputes
    audit_subjects: int = 250_000  # subjects they belong to
    audit_runs: int = 3  # timed runs of the as_of answer (median), after a warm-up
    export_events: int = 1_000  # events of the exported subject
    export_sends: int = 200  # its sends (each with 2 delivery events)
    export_runs: int = 5  # timed exports (median), after a warm-up
    outbox_deliveries: int = 20_000  # deliveries relayed in the timed run (and bare POSTs)
    outbox_warmup: int = 1_000  # relayed (and posted bare) before timing, excluded
    outbox_events_per_subject: int = 2  # consecutive events share a subject (order applies)

    @classmethod
    def scaled(cls, scale: float) -> Sizes:
        def n(value: int, floor: int) -> int:
            return max(floor, round(value * scale))

        base = cls()
        return cls(
            batches=n(base.batches, 2),
            subjects=n(base.subjects, 200),
            lookups=n(base.lookups, 500),
            lookup_warmup=n(base.lookup_warmup, 100),
            lookup_seconds=max(5.0, base.lookup_seconds * min(1.0, scale)),
            http_seconds=max(1.0, base.http_seconds * min(1.0, scale)),
            http_warmup_seconds=max(0.5, base.http_warmup_seconds * min(1.0, scale)),
            proof_leaves=n(base.proof_leaves, 10_000),
            proof_leaves_pg=n(base.proof_leaves_pg, 10_000),
            proofs=n(base.proofs, 100),
            proof_warmup=n(base.proof_warmup, 5),
            proof_seconds=max(10.0, base.proof_seconds * min(1.0, scale)),
            proof_diag=n(base.proof_diag, 5),
            webhook_seconds=max(1.0, base.webhook_seconds * min(1.0, scale)),
            webhook_warmup_seconds=max(0.5, base.webhook_warmup_seconds * min(1.0, scale)),
            webhook_phones=n(base.webhook_phones, 500),
            webhook_baseline_events=n(base.webhook_baseline_events, 2_000),
            receipt_subjects=n(base.receipt_subjects, 200),
            receipts=n(base.receipts, 200),
            receipt_warmup=n(base.receipt_warmup, 20),
            receipt_seconds=max(2.0, base.receipt_seconds * min(1.0, scale)),
            tcf_seconds=max(1.0, base.tcf_seconds * min(1.0, scale)),
            tcf_warmup_passes=n(base.tcf_warmup_passes, 20),
            gate_subjects=n(base.gate_subjects, 200),
            outbox_deliveries=n(base.outbox_deliveries, 2_000),
            outbox_warmup=n(base.outbox_warmup, 200),
            gate_checks=n(base.gate_checks, 50_000),
            gate_cold_checks=n(base.gate_cold_checks, 500),
            gate_seconds=max(1.0, base.gate_seconds * min(1.0, scale)),
            envelope_seals=n(base.envelope_seals, 200),
            envelope_warmup=n(base.envelope_warmup, 20),
            prefilter_audience=n(base.prefilter_audience, 10_000),
            prefilter_subjects=n(base.prefilter_subjects, 2_000),
            prefilter_ingested=n(base.prefilter_ingested, 200),
            prefilter_normalise=n(base.prefilter_normalise, 1_000),
            campaign_recipients=n(base.campaign_recipients, 100),
            campaign_warmup=n(base.campaign_warmup, 20),
            audit_events=n(base.audit_events, 20_000),
            audit_subjects=n(base.audit_subjects, 5_000),
        )
