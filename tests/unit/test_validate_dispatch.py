"""ChunkingDispatcher: documents waiting for a busy worker go together."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from invoicing_validate.dispatch import ChunkingDispatcher


class Gate:
    """A run_many that records its calls and holds the first until opened."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.started = threading.Event()
        self.opened = threading.Event()

    def __call__(self, items: list[str]) -> list[str]:
        self.calls.append(list(items))
        if len(self.calls) == 1:
            self.started.set()
            self.opened.wait(timeout=30)
        if "boom" in items:
            raise ValueError("worker failed")
        return [item.upper() for item in items]


async def _hold_first_call(dispatcher: ChunkingDispatcher[str, str], gate: Gate) -> asyncio.Task[str]:
    first = asyncio.create_task(dispatcher.submit("a"))
    await asyncio.to_thread(gate.started.wait, 30)
    return first


async def test_documents_waiting_for_a_busy_worker_go_in_one_call() -> None:
    gate = Gate()
    with ThreadPoolExecutor(1) as executor:
        dispatcher: ChunkingDispatcher[str, str] = ChunkingDispatcher(executor, 1, gate)
        first = await _hold_first_call(dispatcher, gate)
        rest = [asyncio.create_task(dispatcher.submit(x)) for x in "bcde"]
        await asyncio.sleep(0)  # a yield: lets each task queue its document
        assert dispatcher.waiting == 4
        gate.opened.set()
        assert await first == "A"
        assert [await t for t in rest] == ["B", "C", "D", "E"]
    assert gate.calls == [["a"], ["b", "c", "d", "e"]]


async def test_waiting_documents_are_shared_between_idle_workers() -> None:
    gate = Gate()
    release_second = threading.Event()

    def run_many(items: list[str]) -> list[str]:
        if items == ["x"]:
            release_second.wait(timeout=30)
        return gate(items)

    with ThreadPoolExecutor(2) as executor:
        dispatcher: ChunkingDispatcher[str, str] = ChunkingDispatcher(executor, 2, run_many)
        first = await _hold_first_call(dispatcher, gate)
        second = asyncio.create_task(dispatcher.submit("x"))  # takes the other worker
        await asyncio.sleep(0)
        waiting = [asyncio.create_task(dispatcher.submit(x)) for x in "bcdefg"]
        await asyncio.sleep(0)
        assert dispatcher.waiting == 6
        gate.opened.set()
        release_second.set()
        assert [await t for t in (first, second, *waiting)] == ["A", "X", "B", "C", "D", "E", "F", "G"]
    # Whichever worker frees up first, the six waiting documents go in one
    # or two calls (all six to a lone idle worker, three each to two), and
    # each document is validated exactly once.
    assert len(gate.calls) <= 4
    assert sorted(item for call in gate.calls for item in call) == sorted("axbcdefg")


async def test_a_failed_call_fails_each_of_its_documents_and_the_next_ones_run() -> None:
    gate = Gate()
    with ThreadPoolExecutor(1) as executor:
        dispatcher: ChunkingDispatcher[str, str] = ChunkingDispatcher(executor, 1, gate)
        first = await _hold_first_call(dispatcher, gate)
        doomed = [asyncio.create_task(dispatcher.submit(x)) for x in ("b", "boom")]
        await asyncio.sleep(0)
        gate.opened.set()
        assert await first == "A"
        for task in doomed:
            with pytest.raises(ValueError, match="worker failed"):
                await task
        assert await dispatcher.submit("later") == "LATER"


async def test_a_pool_that_is_shut_down_fails_the_call_instead_of_hanging() -> None:
    executor = ThreadPoolExecutor(1)
    executor.shutdown()
    dispatcher: ChunkingDispatcher[str, str] = ChunkingDispatcher(executor, 1, Gate())
    with pytest.raises(RuntimeError, match="shutdown"):
        await dispatcher.submit("a")
    assert dispatcher.waiting == 0
