"""Group commit: concurrent ingest requests of one tenant share one transaction.

Under load, each request's cost is dominated by its transaction (the fsync that makes a 2xx
durable, the head lock, the checkpoint signature). Requests that arrive while a commit is in
flight queue up; the next one to run takes the whole queue into a single transaction. No
request waits on a timer: a lone request commits at once, exactly as before.

Every request still gets its own answer. If the shared transaction fails (one request's
consent_id conflicts, say), each request of the group is committed alone, so one bad request
never fails its neighbours and nothing is recorded for a request that got an error.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from consentgate.consent.ingest import Finish, IngestResult, IngestService, Prepared


@dataclass(eq=False)
class _Slot:
    request: Prepared
    wake: threading.Event = field(default_factory=threading.Event)
    done: bool = False
    result: list[IngestResult] | None = None
    error: BaseException | None = None


class GroupCommitter:
    def __init__(self, ingest: IngestService, max_events: int = 2000) -> None:
        self._ingest = ingest
        self._max_events = max_events
        self._lock = threading.Lock()
        self._queues: dict[str, list[_Slot]] = {}
        self._leading: set[str] = set()

    def submit(self, tenant: str, request: Prepared) -> list[IngestResult]:
        """Commit ``request`` (possibly with others); block until it is durable or failed."""
        slot = _Slot(request)
        with self._lock:
            self._queues.setdefault(tenant, []).append(slot)
            lead = tenant not in self._leading
            if lead:
                self._leading.add(tenant)
        if not lead:
            slot.wake.wait()  # done by a leader, or handed the lead
        if not slot.done:
            self._lead(tenant)
        if slot.error is not None:
            raise slot.error
        assert slot.result is not None
        return slot.result

    def commit_now(
        self, tenant: str, requests: list[Prepared], finish: Finish | None = None
    ) -> list[list[IngestResult] | BaseException]:
        """Commit ``requests`` in this thread, already grouped by the caller (e.g. webhook
        deliveries that arrived together): one transaction per ``max_events``, each request
        alone if its group fails; ``finish`` runs in each of those transactions (see
        :meth:`IngestService.commit`). Each request's results, or its error."""
        slots = [_Slot(r) for r in requests]
        group: list[_Slot] = []
        taken = 0
        for slot in slots:
            if group and taken + len(slot.request.checked) > self._max_events:
                self._run(tenant, group, finish)
                group, taken = [], 0
            group.append(slot)
            taken += len(slot.request.checked)
        if group:
            self._run(tenant, group, finish)
        return [s.error if s.error is not None else (s.result or []) for s in slots]

    def _lead(self, tenant: str) -> None:
        with self._lock:
            queue = self._queues.get(tenant, [])
            group: list[_Slot] = []
            taken = 0
            while queue and (
                not group or taken + len(queue[0].request.checked) <= self._max_events
            ):
                slot = queue.pop(0)
                group.append(slot)
                taken += len(slot.request.checked)
        try:
            self._run(tenant, group)
        finally:
            with self._lock:
                queue = self._queues.get(tenant, [])
                if queue:
                    queue[0].wake.set()  # hand the lead to the oldest waiter
                else:
                    self._queues.pop(tenant, None)
                    self._leading.discard(tenant)
            for slot in group:
                slot.wake.set()

    def _run(self, tenant: str, group: list[_Slot], finish: Finish | None = None) -> None:
        try:
            answers = self._ingest.commit(tenant, [s.request for s in group], finish)
        except BaseException as exc:
            if len(group) == 1:
                group[0].error, group[0].done = exc, True
                return
            for slot in group:  # isolate the failure: each request on its own
                try:
                    slot.result = self._ingest.commit(tenant, [slot.request], finish)[0]
                except BaseException as own:
                    slot.error = own
                slot.done = True
            return
        for slot, answer in zip(group, answers, strict=True):
            slot.result, slot.done = answer, True
