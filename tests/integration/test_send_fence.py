"""Send fences (:mod:`consentgate.gate.fence`): a withdrawal's acknowledgement waits for the
sends that read consent before it committed, and only for those. PostgreSQL: advisory
locks; SQLite: byte-range locks on a file beside the database, which conflict between two
threads of one process too (here, a sender and a withdrawal in one interpreter)."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

from sqlalchemy import text

from consentgate.bootstrap import App
from consentgate.consent.ingest import EventInput, IngestResult
from consentgate.domain.clock import FixedClock
from consentgate.domain.timeutil import format_rfc3339
from consentgate.gate.fence import SendFence
from consentgate.storage.engine import read_tx


def test_a_withdrawal_waits_for_the_sends_in_flight_to_its_subject(
    core: App, tenant: dict[str, Any]
) -> None:
    fence = SendFence(core.engine)
    done = threading.Event()

    def withdraw() -> None:
        fence.wait_for_sends("acme", [("ref-b", "marketing_rcs"), ("ref-a", "marketing_rcs")])
        done.set()

    with fence.sending("acme", ["ref-a", "ref-c"], "marketing_rcs"):
        # Another subject's withdrawal, or another purpose's, does not wait for this send.
        fence.wait_for_sends("acme", [("ref-b", "marketing_rcs"), ("ref-a", "service")])
        waiter = threading.Thread(target=withdraw)
        waiter.start()
        assert not done.wait(0.5)  # still waiting: ref-a's send is in flight
        # Other senders of the same subject are not held up by each other...
        with fence.sending("acme", ["ref-c"], "marketing_rcs"):
            pass
    waiter.join(timeout=10)
    assert done.is_set()  # ...and the withdrawal is answered once the send is over
    # The fences went back with the connections: a withdrawal now passes straight through.
    fence.wait_for_sends("acme", [("ref-a", "marketing_rcs")])
    fence.close()


def _record(core: App, clock: FixedClock, consent_id: str, status: str) -> IngestResult:
    event = EventInput(
        consent_id=consent_id,
        consent_type="marketing_rcs",
        status=status,
        timestamp=format_rfc3339(clock.now()),
        phone="+447911123456",
    )
    (result,) = core.ingest.ingest("acme", "GB", [event], batch=False)
    return result


def test_an_ingested_withdrawal_waits_for_the_sends_in_flight_a_grant_does_not(
    core: App, tenant: dict[str, Any], clock: FixedClock
) -> None:
    result = _record(core, clock, "c-1", "granted")
    with read_tx(core.engine) as conn:
        ref = core.links.known_hashed(conn, "acme", [result.hashed_id])[result.hashed_id]
    fence = SendFence(core.engine)
    answered = threading.Event()

    def withdraw() -> None:
        _record(core, clock, "c-3", "withdrawn")
        answered.set()

    with fence.sending("acme", [ref], "marketing_rcs"):
        clock.advance(timedelta(seconds=1))
        _record(core, clock, "c-2", "granted")  # a grant is answered at once
        clock.advance(timedelta(seconds=1))
        withdrawer = threading.Thread(target=withdraw)
        withdrawer.start()
        assert not answered.wait(0.5)  # not answered while the send is out...
        with read_tx(core.engine) as conn:  # ...though committed (others see it already)
            status = conn.execute(
                text(
                    "SELECT status FROM consent_state WHERE tenant_id = 'acme' "
                    "AND subject_ref = :r AND consent_type = 'marketing_rcs'"
                ),
                {"r": ref},
            ).scalar_one()
        assert status == "withdrawn"
    withdrawer.join(timeout=10)
    assert answered.is_set()
    fence.close()


def test_an_erasure_waits_for_the_sends_in_flight_to_its_subject(
    core: App, tenant: dict[str, Any], clock: FixedClock
) -> None:
    result = _record(core, clock, "c-1", "granted")
    with read_tx(core.engine) as conn:
        ref = core.links.known_hashed(conn, "acme", [result.hashed_id])[result.hashed_id]
    fence = SendFence(core.engine)  # another sender's (a worker process's) fence
    erased = threading.Event()

    def erase() -> None:
        core.erasure.erase("acme", result.hashed_id)
        erased.set()

    with fence.sending("acme", [ref], "marketing_rcs"):
        eraser = threading.Thread(target=erase)
        eraser.start()
        assert not erased.wait(0.5)  # committed, but not answered while the send is out
    eraser.join(timeout=10)
    assert erased.is_set()
    fence.close()
