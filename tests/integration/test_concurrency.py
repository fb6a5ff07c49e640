"""Concurrent writers of one tenant: appends serialise, nothing is lost, the ledger verifies."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from consentgate.bootstrap import App
from consentgate.consent.ingest import EventInput
from consentgate.ledger.verify import verify_tenant
from consentgate.storage.engine import read_tx


def test_parallel_ingest_keeps_the_ledger_whole(core: App, tenant: dict[str, Any]) -> None:
    def writer(worker: int) -> list[int]:
        seqs = []
        for i in range(15):
            [result] = core.ingest.ingest(
                "acme",
                "GB",
                [
                    EventInput(
                        consent_id=f"w{worker}-{i}",
                        consent_type="marketing_rcs",
                        status="granted" if i % 2 else "withdrawn",
                        timestamp=f"2026-11-01T10:{i:02d}:00Z",
                        # Workers share subjects, so subject creation races too.
                        phone=f"+4479111{i % 5:05d}",
                    )
                ],
                batch=False,
            )
            seqs.append(result.seq)
        return seqs

    with ThreadPoolExecutor(max_workers=6) as pool:
        seqs = [s for batch in pool.map(writer, range(6)) for s in batch]
    assert sorted(seqs) == list(range(90))
    with read_tx(core.engine) as conn:
        report = verify_tenant(conn, "acme", core.ledger)
    assert report.tree_size == 90
    assert report.checkpoints == 90
    assert report.state_rows == 5
