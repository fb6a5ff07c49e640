"""Send fences (:mod:`consentgate.gate.fence`): a withdrawal's acknowledgement waits for the
sends that read consent before it committed, and only for those. PostgreSQL: advisory
locks; SQLite: byte-range locks on a file beside the database, which conflict between two
threads of one process too (here, a sender and a withdrawal in one interpreter)."""

from __future__ import annotations

import threading
from typing import Any

from consentgate.bootstrap import App
from consentgate.gate.fence import SendFence


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
