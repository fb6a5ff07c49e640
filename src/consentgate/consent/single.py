"""Single-event ingest (``POST /v1/consent-events`` with one event) from an event loop.

The route used to hop to the thread pool twice per request (prepare, then the group
committer's blocking submit): ~100 µs of CPU per hop, for an event whose own work is a few
hundred microseconds. Here a request only queues (:mod:`consentgate.consent.batcher`): one
thread per tenant shard takes whatever arrived, prepares each event on its own (a bad one
gets its own error), and commits the tenant's good ones together through
:meth:`GroupCommitter.commit_now` (one transaction; should it fail, each request alone, so
one request's conflict never fails its neighbours). Each caller gets its own answer, as if
it had been alone. A lone request is committed at once.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from consentgate.consent.batcher import Batcher
from consentgate.consent.group_commit import GroupCommitter
from consentgate.consent.ingest import EventInput, IngestResult, IngestService, Prepared

_SHARDS = 8  # threads per process, each started on first use; a tenant always on one


@dataclass(frozen=True, slots=True)
class SingleEvent:
    tenant: str
    region: str | None
    event: EventInput


class SingleEventIngest:
    def __init__(
        self, ingest: IngestService, committer: GroupCommitter, linger: float = 0.0
    ) -> None:
        self._ingest = ingest
        self._committer = committer
        self._batchers: list[Batcher[SingleEvent, IngestResult]] = [
            Batcher(self.handle_many, f"single-ingest-{n}", linger=linger) for n in range(_SHARDS)
        ]

    async def submit(self, tenant: str, region: str | None, event: EventInput) -> IngestResult:
        """Record one event; its result once durable, or the error to answer with."""
        shard = zlib.crc32(tenant.encode()) % _SHARDS
        return await self._batchers[shard].submit(SingleEvent(tenant, region, event))

    def handle_many(self, items: Sequence[SingleEvent]) -> list[IngestResult | Exception]:
        answers: list[IngestResult | Exception | None] = [None] * len(items)
        by_tenant: dict[str, list[tuple[int, Prepared]]] = {}
        for i, item in enumerate(items):
            try:
                prepared = self._ingest.prepare(item.tenant, item.region, [item.event], batch=False)
            except Exception as exc:
                answers[i] = exc
                continue
            by_tenant.setdefault(item.tenant, []).append((i, prepared))
        for tenant, pending in by_tenant.items():
            outcomes = self._committer.commit_now(tenant, [p for _, p in pending])
            for (i, _), outcome in zip(pending, outcomes, strict=True):
                if isinstance(outcome, Exception):
                    answers[i] = outcome
                elif isinstance(outcome, BaseException):
                    raise outcome  # KeyboardInterrupt and the like: not an answer
                else:
                    answers[i] = outcome[0]
        return [a for a in answers if a is not None]

    def close(self) -> None:
        """Answer what is queued, then stop the threads."""
        for batcher in self._batchers:
            batcher.close()
