"""Hands documents to the validation processes in chunks.

Every call into a worker process costs the event loop a pickle, a pipe
write and a wake-up; profiles showed that as the largest share of the
validate process outside validation itself. Documents that arrive while
every worker is busy therefore wait here and go together, as one call, to
the next worker that frees up, which takes its share of them (what waits
divided by the number of workers, two at least): one document per call
when traffic is light, larger chunks under load, and never a wait for a
chunk to fill.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

Args = TypeVar("Args")
Result = TypeVar("Result")


class ChunkingDispatcher(Generic[Args, Result]):
    """``await submit(args)`` gives ``(await run_many([... args ...]))[i]``,
    with at most ``workers`` calls of ``run_many`` at a time. A chunk whose
    call fails fails for each of its documents; ``submit(args, alone=True)``
    sends a document in a chunk of its own (a retry must not take other
    documents down with it again)."""

    def __init__(self, workers: int, run_many: Callable[[list[Args]], Awaitable[Sequence[Result]]]) -> None:
        self._workers = workers
        self._run_many = run_many
        self._pending: list[tuple[Args, asyncio.Future[Result]]] = []
        self._alone: list[tuple[Args, asyncio.Future[Result]]] = []
        self._in_flight = 0
        # The calls running: a task nobody holds may be collected mid-call.
        self._calls: set[asyncio.Future[Sequence[Result]]] = set()

    @property
    def waiting(self) -> int:
        return len(self._pending) + len(self._alone)

    async def submit(self, args: Args, alone: bool = False) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        (self._alone if alone else self._pending).append((args, future))
        self._dispatch()
        return await future

    def _dispatch(self) -> None:
        while (self._alone or self._pending) and self._in_flight < self._workers:
            if self._alone:
                chunk = [self._alone.pop(0)]
            else:
                # A worker's share of what waits, busy workers counted: a
                # chunk's documents are validated one after the other and
                # answered together, so a worker that took everything would
                # keep them waiting while a worker freed up a moment later
                # sat idle. Two at least: a second document costs the warm
                # worker less than a cold one (scripts/bench_dispatch.py).
                size = max(2, math.ceil(len(self._pending) / self._workers))
                chunk, self._pending = self._pending[:size], self._pending[size:]
            self._in_flight += 1
            call = asyncio.ensure_future(self._run_many([args for args, _ in chunk]))  # noqa: RUF006 - kept below
            self._calls.add(call)
            call.add_done_callback(self._calls.discard)
            call.add_done_callback(lambda done, chunk=chunk: self._settle(chunk, done))  # type: ignore[misc]

    def _settle(self, chunk: list[tuple[Args, asyncio.Future[Result]]], done: asyncio.Future[Sequence[Result]]) -> None:
        self._in_flight -= 1
        if done.cancelled():
            for _, future in chunk:
                future.cancel()
            self._dispatch()
            return
        try:
            results = done.result()
            if len(results) != len(chunk):
                raise RuntimeError(f"{len(results)} results for {len(chunk)} documents")
        except Exception as exc:  # noqa: BLE001 - every caller of the chunk gets the failure
            _fail(chunk, exc)
        else:
            for (_, future), result in zip(chunk, results, strict=True):
                if not future.done():  # its caller may have been cancelled
                    future.set_result(result)
        self._dispatch()


def _fail(chunk: Sequence[tuple[object, asyncio.Future[Any]]], exc: Exception) -> None:
    for _, future in chunk:
        if not future.done():
            future.set_exception(exc)
