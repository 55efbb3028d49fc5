"""ChunkingDispatcher: documents waiting for a busy worker go together."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

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


def in_thread(run_many: Callable[[list[str]], list[str]]) -> Callable[[list[str]], Awaitable[list[str]]]:
    """The dispatcher awaits its calls; a blocking run_many runs in a thread
    (as a worker process would run it elsewhere)."""

    async def call(items: list[str]) -> list[str]:
        return await asyncio.to_thread(run_many, items)

    return call


async def _hold_first_call(dispatcher: ChunkingDispatcher[str, str], gate: Gate) -> asyncio.Task[str]:
    first = asyncio.create_task(dispatcher.submit("a"))
    await asyncio.to_thread(gate.started.wait, 30)
    return first


async def test_documents_waiting_for_a_busy_worker_go_in_one_call() -> None:
    gate = Gate()
    dispatcher: ChunkingDispatcher[str, str] = ChunkingDispatcher(1, in_thread(gate))
    first = await _hold_first_call(dispatcher, gate)
    rest = [asyncio.create_task(dispatcher.submit(x)) for x in "bcde"]
    await asyncio.sleep(0)  # a yield: lets each task queue its document
    assert dispatcher.waiting == 4
    gate.opened.set()
    assert await first == "A"
    assert [await t for t in rest] == ["B", "C", "D", "E"]
    assert gate.calls == [["a"], ["b", "c", "d", "e"]]


@dataclass
class BothBusy:
    """Two workers, both busy: the first on "a" (until ``gate`` opens), the
    other on "x" (until ``hold_x`` is set), and documents waiting."""

    gate: Gate
    hold_x: threading.Event
    dispatcher: ChunkingDispatcher[str, str]
    first: asyncio.Task[str]
    busy: asyncio.Task[str]
    waiting: list[asyncio.Task[str]]


async def _both_busy(waiting: str) -> BothBusy:
    gate = Gate()
    hold_x = threading.Event()

    def run_many(items: list[str]) -> list[str]:
        if items == ["x"]:
            hold_x.wait(timeout=30)
        return gate(items)

    dispatcher: ChunkingDispatcher[str, str] = ChunkingDispatcher(2, in_thread(run_many))
    first = await _hold_first_call(dispatcher, gate)
    busy = asyncio.create_task(dispatcher.submit("x"))  # takes the other worker
    await asyncio.sleep(0)
    queued = [asyncio.create_task(dispatcher.submit(x)) for x in waiting]
    await asyncio.sleep(0)
    assert dispatcher.waiting == len(waiting)
    return BothBusy(gate, hold_x, dispatcher, first, busy, queued)


async def test_waiting_documents_are_shared_between_idle_workers() -> None:
    run = await _both_busy("bcdefg")
    run.gate.opened.set()
    run.hold_x.set()
    assert [await t for t in (run.first, run.busy, *run.waiting)] == ["A", "X", "B", "C", "D", "E", "F", "G"]
    # Whichever worker frees up first, it takes its share of the six (three),
    # and each document is validated exactly once.
    assert max(len(call) for call in run.gate.calls) == 3
    assert sorted(item for call in run.gate.calls for item in call) == sorted("axbcdefg")


async def test_a_worker_that_frees_up_leaves_the_busy_one_its_share() -> None:
    """Documents of one chunk are answered together: a worker that took all
    that waits would keep them waiting while the other, a moment later,
    had nothing to do."""
    run = await _both_busy("bcdefg")
    try:
        run.gate.opened.set()  # the first worker frees up; the second stays busy
        assert await run.first == "A"
        assert [await t for t in run.waiting[:3]] == ["B", "C", "D"]
        # Its share of the six, not all six; it goes on with what is left.
        assert run.gate.calls[1] == ["b", "c", "d"]
    finally:
        run.hold_x.set()
    assert [await t for t in (run.busy, *run.waiting[3:])] == ["X", "E", "F", "G"]
    assert sorted(item for call in run.gate.calls for item in call) == sorted("axbcdefg")


async def test_two_waiting_documents_stay_together() -> None:
    """Below two per chunk the warm worker would hand documents to a cold one
    for no gain in wait (scripts/bench_dispatch.py, bursts of four)."""
    run = await _both_busy("bc")
    try:
        run.gate.opened.set()
        assert [await t for t in (run.first, *run.waiting)] == ["A", "B", "C"]
    finally:
        run.hold_x.set()
    assert await run.busy == "X"
    assert ["b", "c"] in run.gate.calls


async def test_a_failed_call_fails_each_of_its_documents_and_the_next_ones_run() -> None:
    gate = Gate()
    dispatcher: ChunkingDispatcher[str, str] = ChunkingDispatcher(1, in_thread(gate))
    first = await _hold_first_call(dispatcher, gate)
    doomed = [asyncio.create_task(dispatcher.submit(x)) for x in ("b", "boom")]
    await asyncio.sleep(0)
    gate.opened.set()
    assert await first == "A"
    for task in doomed:
        with pytest.raises(ValueError, match="worker failed"):
            await task
    assert await dispatcher.submit("later") == "LATER"


async def test_a_retry_goes_alone_and_first() -> None:
    gate = Gate()
    dispatcher: ChunkingDispatcher[str, str] = ChunkingDispatcher(1, in_thread(gate))
    first = await _hold_first_call(dispatcher, gate)
    waiting = [asyncio.create_task(dispatcher.submit(x)) for x in "bc"]
    retry = asyncio.create_task(dispatcher.submit("r", alone=True))
    await asyncio.sleep(0)
    gate.opened.set()
    assert [await t for t in (first, retry, *waiting)] == ["A", "R", "B", "C"]
    # The retry was not chunked with the others, and went before them.
    assert gate.calls == [["a"], ["r"], ["b", "c"]]
