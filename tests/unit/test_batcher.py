"""consent.batcher: a lone item is handled alone at once; when busy, items arriving within
the linger share a batch; every caller gets its own answer or its own error."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

from consentgate.consent.batcher import Batcher


class _Recorder:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.lock = threading.Lock()

    def __call__(self, items: Sequence[int]) -> list[int | Exception]:
        with self.lock:
            self.batches.append(list(items))
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]


def test_idle_item_alone_then_busy_items_share_a_batch() -> None:
    handle = _Recorder()
    # A generous linger and busy window, so the test does not depend on the machine's speed.
    batcher: Batcher[int, int] = Batcher(handle, "t", linger=0.5, busy_window=5.0)

    async def go() -> list[object]:
        first = await batcher.submit(0)  # idle: handled at once, alone
        second = asyncio.ensure_future(batcher.submit(2))  # busy now: waits for company
        await asyncio.sleep(0.05)
        third = asyncio.ensure_future(batcher.submit(4))
        answers = await asyncio.gather(second, third)
        return [first, *answers]

    try:
        assert asyncio.run(go()) == [0, 20, 40]
    finally:
        batcher.close()
    assert handle.batches == [[0], [2, 4]]


def test_without_linger_a_busy_item_is_not_held() -> None:
    handle = _Recorder()
    batcher: Batcher[int, int] = Batcher(handle, "t", linger=0.0, busy_window=5.0)

    async def go() -> None:
        await batcher.submit(0)
        await batcher.submit(2)

    try:
        asyncio.run(go())
    finally:
        batcher.close()
    assert handle.batches == [[0], [2]]


def test_each_caller_gets_its_own_error() -> None:
    handle = _Recorder()
    batcher: Batcher[int, int] = Batcher(handle, "t", linger=0.2, busy_window=5.0)

    async def one(i: int) -> object:
        try:
            return await batcher.submit(i)
        except ValueError as exc:
            return str(exc)

    async def go() -> list[object]:
        await batcher.submit(0)
        return list(await asyncio.gather(*(one(i) for i in range(1, 6))))

    try:
        assert asyncio.run(go()) == ["odd 1", 20, "odd 3", 40, "odd 5"]
    finally:
        batcher.close()
    assert sum(len(b) for b in handle.batches) == 6
