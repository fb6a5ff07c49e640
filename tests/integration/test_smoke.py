from consentgate.bootstrap import App
from consentgate.consent.ingest import EventInput


def test_ingest_and_read_back(core: App, tenant: dict[str, object]) -> None:
    [r] = core.ingest.ingest(
        "acme",
        "GB",
        [
            EventInput(
                consent_id="c1",
                consent_type="marketing_rcs",
                status="granted",
                timestamp="2026-11-01T10:00:00Z",
                phone="07911 123456",
            )
        ],
        batch=False,
    )
    assert r.seq == 0 and r.created
    assert core.queries.by_hashed_id("acme", r.hashed_id).consents["marketing_rcs"].event_seq == 0
