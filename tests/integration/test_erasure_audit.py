"""Erasure seen through the audit API (two parts built apart, checked together): before the
erasure instant the subject still counts, anonymously (its leaves stay and still prove); from
that instant on it has no state; its export is gone; the ledger still verifies."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from consentgate.bootstrap import App
from consentgate.consent.ingest import EventInput
from consentgate.domain.clock import FixedClock
from consentgate.domain.timeutil import format_rfc3339
from consentgate.errors import NotFound
from consentgate.ledger.verify import verify_tenant
from consentgate.storage.engine import read_tx

ERASED = "+447911100011"
KEPT = "+447911100012"


def _grant(core: App, cid: str, phone: str, at: str) -> str:
    [r] = core.ingest.ingest(
        "acme", "GB", [EventInput(cid, "marketing_rcs", "granted", at, phone=phone)], batch=False
    )
    return r.hashed_id


def _granted(core: App, as_of: str) -> list[dict[str, Any]]:
    query = core.audit.as_of_query("acme", as_of=as_of, consent_type="marketing_rcs")
    return list(core.audit.consents_page("acme", query, None, 100)["subjects"])


def test_erased_subject_counts_anonymously_before_and_not_after(
    core: App, tenant: dict[str, Any], clock: FixedClock
) -> None:
    granted_at = format_rfc3339(clock.now() - timedelta(days=2))
    erased = _grant(core, "c-erased", ERASED, granted_at)
    kept = _grant(core, "c-kept", KEPT, granted_at)
    core.exports.export("acme", erased)  # exportable while linked

    before = format_rfc3339(clock.now() - timedelta(seconds=1))
    clock.advance(timedelta(minutes=1))
    report = core.erasure.erase("acme", erased)
    assert report.as_dict()["erased"] is True
    clock.advance(timedelta(minutes=1))

    then = _granted(core, before)
    assert sorted(str(s["hashed_id"]) for s in then) == sorted(["None", kept])
    assert {s["status"] for s in then} == {"granted"}
    now = _granted(core, format_rfc3339(clock.now()))
    assert [s["hashed_id"] for s in now] == [kept]
    with pytest.raises(NotFound):
        core.exports.export("acme", erased)
    with read_tx(core.engine) as conn:
        report_after = verify_tenant(conn, "acme", core.ledger)
    assert report_after.tree_size == 3  # two grants and the erasure leaf, all still proved
