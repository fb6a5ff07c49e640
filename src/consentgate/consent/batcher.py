"""From an event loop to one worker thread, in batches: each caller awaits its own answer.

A request whose work blocks (a database transaction) is usually handed to a thread pool:
one thread hop per request, ~90-130 µs of CPU on the test box (futex wake, GIL handover,
the loop's self-pipe), more than the webhook's signature check, adapter and validation
together. Here requests only queue: one thread takes everything queued, handles it as one
batch (one replay lookup, one transaction), and wakes each event loop once per batch. A lone
request is handled at once, never held back for company; under load a batch is whatever
arrived while the previous one was committing, and, with a ``linger``, whatever arrives in
the next millisecond or two (clients that were just answered send their next request).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

I = TypeVar("I")  # noqa: E741 — an item
O = TypeVar("O")  # noqa: E741 — its answer

log = logging.getLogger("consentgate.batcher")

#: A batcher is busy when its previous batch ended less than this long ago.
BUSY_WINDOW = 0.010


class Batcher(Generic[I, O]):
    def __init__(
        self,
        handle: Callable[[Sequence[I]], Sequence[O | Exception]],
        name: str,
        max_batch: int = 256,
        linger: float = 0.0,
        busy_window: float | None = None,
    ) -> None:
        """``handle`` answers a batch, in order: an answer or the exception to raise.
        ``linger``: when busy (the previous batch ended less than ``BUSY_WINDOW`` ago), wait
        up to this many seconds for more items before handling a short batch."""
        self._handle = handle
        self._name = name
        self._max = max_batch
        self._linger = linger
        self._busy_window = BUSY_WINDOW if busy_window is None else busy_window
        self._cond = threading.Condition()
        self._queue: list[tuple[I, asyncio.AbstractEventLoop, asyncio.Future[O]]] = []
        self._thread: threading.Thread | None = None
        self._closed = False

    async def submit(self, item: I) -> O:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[O] = loop.create_future()
        with self._cond:
            if self._closed:
                raise RuntimeError(f"{self._name} is closed")
            self._queue.append((item, loop, future))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify()
        return await future

    def close(self) -> None:
        """Answer what is queued, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=30)

    def _run(self) -> None:
        ended = float("-inf")  # when the previous batch was answered
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                if self._linger > 0 and time.monotonic() - ended < self._busy_window:
                    # Busy: a batch's cost is mostly its transaction (one fsync, one
                    # checkpoint, a dozen statements), so a short wait for company makes
                    # each request far cheaper. Idle, a request is handled at once.
                    deadline = time.monotonic() + self._linger
                    while len(self._queue) < self._max and not self._closed:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                batch = self._queue[: self._max]
                del self._queue[: self._max]
            try:
                answers: Sequence[O | BaseException] = self._handle([item for item, _, _ in batch])
                if len(answers) != len(batch):
                    raise RuntimeError(f"{self._name}: {len(answers)} answers for {len(batch)}")
            except BaseException as exc:  # answer every caller, keep the thread alive
                log.exception("%s: a batch failed as a whole", self._name)
                answers = [exc] * len(batch)
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[O], object]]] = {}
            for (_, loop, future), answer in zip(batch, answers, strict=True):
                by_loop.setdefault(loop, []).append((future, answer))
            for loop, settled in by_loop.items():
                with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits
                    loop.call_soon_threadsafe(_settle, settled)
            ended = time.monotonic()


def _settle(settled: list[tuple[asyncio.Future[O], object]]) -> None:
    for future, answer in settled:
        if future.done():  # the caller went away (cancelled)
            continue
        if isinstance(answer, BaseException):
            future.set_exception(answer)
        else:
            future.set_result(answer)  # type: ignore[arg-type]
