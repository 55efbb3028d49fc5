"""A client-streaming call made with gRPC's synchronous API, awaited from
asyncio.

When a server answers a client stream before reading all of it (a refusal
at its gate, a quota, a size limit), grpc.aio reports INTERNAL "Internal
error from Core" for the write that failed instead of the server's status
(grpc/grpc#36066). The synchronous API keeps the server's answer, so the
uploads (`invoicectl submit --attach`, route's delivery to another
platform) go through it: gRPC's own thread pulls the requests, and the
event loop waits for the call's end without blocking.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

Request = TypeVar("Request")
Response = TypeVar("Response", covariant=True)


class StreamFuture(Protocol[Response]):
    """What a synchronous stream-unary call's ``.future(...)`` returns."""

    def cancel(self) -> bool: ...
    def add_done_callback(self, fn: Callable[[Any], None]) -> None: ...
    def result(self) -> Response: ...


async def send_stream(
    start: Callable[..., StreamFuture[Response]],
    requests: Iterator[Request],
    timeout: float,
    metadata: tuple[tuple[str, str], ...] = (),
) -> Response:
    """Run ``start(requests, timeout=..., metadata=...)`` (a synchronous
    stub's ``Method.future``) and wait for its answer. An exception raised
    by ``requests`` cancels the call before its end, so the server keeps
    nothing, and is raised here instead of the call's CANCELLED (raised
    inside gRPC's thread it would come back as UNKNOWN, with a traceback on
    stderr). Raises the call's grpc.RpcError when the server refuses; a
    cancellation of the awaiting coroutine cancels the call."""
    ready = threading.Event()
    failures: list[Exception] = []
    calls: list[StreamFuture[Response]] = []

    def guarded() -> Iterator[Request]:
        # The call must exist before anything can fail and need to cancel it.
        ready.wait()
        try:
            yield from requests
        except Exception as exc:  # noqa: BLE001 - raised by send_stream, after the cancel
            failures.append(exc)
            calls[0].cancel()

    call = start(guarded(), timeout=timeout, metadata=metadata)
    calls.append(call)
    ready.set()
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()

    def settle() -> None:
        if not finished.done():
            finished.set_result(None)

    def on_done(_: object) -> None:
        # gRPC's thread, or this one when the call has already ended.
        loop.call_soon_threadsafe(settle)

    call.add_done_callback(on_done)
    try:
        await finished
    except asyncio.CancelledError:
        call.cancel()
        raise
    if failures:
        raise failures[0]
    return call.result()
