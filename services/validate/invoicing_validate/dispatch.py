"""Hands documents to the validation processes in chunks.

Every call into a process pool costs the event loop a pickle, a pipe write,
a wake-up of the pool's manager thread and a cross-thread callback; profiles
showed that as the largest share of the validate process outside validation
itself. Documents that arrive while every worker is busy therefore wait here
and go together, as one call, to the next worker that frees up: one document
per call when traffic is light, larger chunks under load, and never a wait
for a chunk to fill.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any, Generic, TypeVar

Args = TypeVar("Args")
Result = TypeVar("Result")


class ChunkingDispatcher(Generic[Args, Result]):
    """``await submit(args)`` gives ``run_many([... args ...])[i]``, with at
    most ``workers`` calls of ``run_many`` in ``executor`` at a time."""

    def __init__(self, executor: Executor, workers: int, run_many: Callable[[list[Args]], Sequence[Result]]) -> None:
        self._executor = executor
        self._workers = workers
        self._run_many = run_many
        self._pending: list[tuple[Args, asyncio.Future[Result]]] = []
        self._in_flight = 0

    @property
    def waiting(self) -> int:
        return len(self._pending)

    async def submit(self, args: Args) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((args, future))
        self._dispatch()
        return await future

    def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending and self._in_flight < self._workers:
            # Share what waits between the idle workers rather than giving it
            # all to the first one.
            size = math.ceil(len(self._pending) / (self._workers - self._in_flight))
            chunk, self._pending = self._pending[:size], self._pending[size:]
            try:
                call = loop.run_in_executor(self._executor, self._run_many, [args for args, _ in chunk])
            except Exception as exc:  # noqa: BLE001 - e.g. the pool is shut down: its callers must hear of it
                _fail(chunk, exc)
                continue
            self._in_flight += 1
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
