"""Validation worker processes, supervised.

A ProcessPoolExecutor cannot take a SIGKILL of one of its processes (the
whole pool breaks for good) nor stop one call that runs too long. Here each
worker is a process of its own with a pipe: a call that outlives its time
limit has its worker killed; a worker that dies is replaced (and warmed up)
while the others go on; the call it was running fails with WorkerFailure,
and the caller decides whether to try again. A worker that dies while idle
is replaced as soon as its pipe closes, not when its turn comes.

The idle worker that finished last takes the next call. On this kind of
shared machine a validation costs up to twice the CPU when its process has
been idle for a few milliseconds (its caches have gone cold; see
docs/performance.md, "Cold caches"), so a quiet pool keeps one worker busy
and warm rather than handing calls round, and the others take calls only
when it is busy.

Workers do not outlive the service: each asks the kernel for SIGKILL when
its parent dies (Linux PR_SET_PDEATHSIG), and also checks its parent
between calls, so a `kill -9` of the service leaves no process behind.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import logging
import multiprocessing
import os
import pickle
import signal
import struct
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.reduction import ForkingPickler
from typing import Any

from mode import Service
from opentelemetry import metrics

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
# How long a worker may take to start and warm up before it counts as failed.
START_TIMEOUT_SECONDS = 300.0
# A worker that cannot be started is tried again after this long, doubling.
RESTART_BACKOFF_SECONDS = 1.0
# Calls larger than a pipe buffer or so are written from a thread.
_SEND_IN_THREAD_BYTES = 256 * 1024

WORKER_RESTARTS = metrics.get_meter("invoicing").create_counter(
    "invoicing.validate.worker_restarts",
    unit="{process}",
    description="Validation worker processes replaced, by reason (crashed, timed_out)",
)


class WorkerFailure(Exception):
    """The call did not complete: its worker died or ran out of time."""

    reason = "failed"


class WorkerCrashed(WorkerFailure):
    reason = "crashed"


class WorkerTimedOut(WorkerFailure):
    reason = "timed_out"


def _die_with(parent: int) -> None:
    """In the worker: be killed when the parent dies, however it dies."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    # The parent may have died before the request above; and on other
    # systems a thread watches it.
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            threading.Event().wait(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _serve(calls: Connection, replies: Connection, parent: int, warm_up: Callable[[], object] | None) -> None:
    """The worker's main: warm up, then answer calls until their pipe closes."""
    _die_with(parent)
    # The service's SIGTERM is for the service: it stops its workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if warm_up is not None:
        warm_up()
    replies.send(("ready", os.getpid()))
    while True:
        try:
            function, args = calls.recv()
        except (EOFError, OSError):
            return
        try:
            result = ("ok", function(*args))
        except Exception as exc:  # noqa: BLE001 - the caller gets it, the worker goes on
            result = ("error", _portable(exc))
        replies.send(result)


def _portable(exc: Exception) -> Exception:
    """``exc`` if it can cross the pipe, else a RuntimeError saying what it was."""
    try:
        pickle.dumps(exc)
    except Exception:  # noqa: BLE001 - any pickling failure
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


class _Replies:
    """Messages from a worker's reply pipe, read by the event loop as they
    come (``loop.add_reader``, the pipe's end non-blocking), framed as
    ``Connection.send`` frames them: a 4-byte signed length (-1, then an
    8-byte one, for the largest) and the pickled message."""

    def __init__(self, pipe: Connection, on_close: Callable[[], None] | None = None) -> None:
        self._pipe = pipe
        self._on_close = on_close
        self._fd = pipe.fileno()
        self._buffer = bytearray()
        self._messages: collections.deque[bytes] = collections.deque()
        self._waiter: asyncio.Future[bytes] | None = None
        self._closed: BaseException | None = None
        self._loop = asyncio.get_running_loop()
        os.set_blocking(self._fd, False)
        self._loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, 1 << 20)
        except BlockingIOError:
            return
        except OSError as exc:
            self._close(exc)
            return
        if not data:
            self._close(EOFError("the worker closed its pipe"))
            return
        self._buffer += data
        while (message := self._frame()) is not None:
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(message)
                self._waiter = None
            else:
                self._messages.append(message)

    def _frame(self) -> bytes | None:
        if len(self._buffer) < 4:
            return None
        (size,) = struct.unpack_from("!i", self._buffer)
        start = 4
        if size == -1:
            if len(self._buffer) < 12:
                return None
            (size,) = struct.unpack_from("!Q", self._buffer, 4)
            start = 12
        if len(self._buffer) < start + size:
            return None
        message = bytes(self._buffer[start : start + size])
        del self._buffer[: start + size]
        return message

    def _close(self, exc: BaseException) -> None:
        if self._closed is not None:
            return
        self._closed = exc
        self._loop.remove_reader(self._fd)
        self._pipe.close()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
            self._waiter = None
        if self._on_close is not None:
            self._on_close()

    def next(self) -> asyncio.Future[bytes]:
        """The next message; EOFError or OSError once the pipe is closed."""
        waiter: asyncio.Future[bytes] = self._loop.create_future()
        if self._messages:
            waiter.set_result(self._messages.popleft())
        elif self._closed is not None:
            waiter.set_exception(self._closed)
        else:
            self._waiter = waiter
        return waiter


class _Worker:
    """One process and the parent's ends of its two pipes: calls go down one
    (written by the caller, blocking), replies come up the other, read by
    the event loop: no thread per call."""

    def __init__(
        self,
        context: Any,
        warm_up: Callable[[], object] | None,
        on_exit: Callable[[_Worker], None] | None = None,
    ) -> None:
        calls, self._conn = context.Pipe(duplex=False)
        self._on_exit = on_exit
        self._reply_pipe, replies = context.Pipe(duplex=False)
        self.process: BaseProcess = context.Process(
            target=_serve, args=(calls, replies, os.getpid(), warm_up), name="validate-worker", daemon=True
        )
        self.process.start()
        calls.close()
        replies.close()
        self._replies: _Replies | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid

    async def _receive(self, timeout: float | None) -> Any:
        """The next message from the worker; WorkerCrashed if it died first,
        TimeoutError if nothing came within ``timeout``."""
        if self._replies is None:
            # In the loop's thread (the worker itself was made in another).
            # This end becomes non-blocking; the worker's, a file of its
            # own, stays blocking.
            on_exit = self._on_exit
            self._replies = _Replies(self._reply_pipe, None if on_exit is None else lambda: on_exit(self))
        try:
            message = await asyncio.wait_for(self._replies.next(), timeout)
        except TimeoutError:
            raise  # an OSError too, and the caller's to handle
        except (EOFError, OSError) as exc:
            raise WorkerCrashed(f"validation worker {self.pid} died ({self._exit_status()})") from exc
        return pickle.loads(message)  # noqa: S301 - written by our own worker process

    def _exit_status(self) -> str:
        self.process.join(timeout=1.0)
        code = self.process.exitcode
        if code is None:
            return "still running"
        return f"signal {-code}" if code < 0 else f"exit code {code}"

    async def started(self, timeout: float) -> int:
        try:
            message = await self._receive(timeout)
        except TimeoutError:
            self.kill()
            raise WorkerTimedOut(f"validation worker {self.pid} did not start within {timeout:.0f}s") from None
        if not (isinstance(message, tuple) and message[0] == "ready"):
            self.kill()
            raise WorkerCrashed(f"validation worker {self.pid} sent {message!r} instead of being ready")
        return int(message[1])

    async def call(self, function: Callable[..., Any], args: tuple[Any, ...], timeout: float) -> Any:
        payload = bytes(ForkingPickler.dumps((function, args)))
        try:
            if len(payload) > _SEND_IN_THREAD_BYTES:
                # A large document fills the pipe: the loop must not wait on it.
                await asyncio.to_thread(self._conn.send_bytes, payload)
            else:
                self._conn.send_bytes(payload)
        except (BrokenPipeError, OSError) as exc:
            raise WorkerCrashed(f"validation worker {self.pid} is gone ({self._exit_status()})") from exc
        try:
            kind, value = await self._receive(timeout)
        except TimeoutError:
            self.kill()
            raise WorkerTimedOut(f"validation took longer than {timeout:g}s; its worker was stopped") from None
        if kind == "error":
            raise value
        return value

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, AttributeError):
            self.process.kill()
        self.process.join(timeout=5.0)
        self._conn.close()

    def stop(self, timeout: float) -> None:
        """Close the pipe (the worker's loop ends) and wait; kill if need be."""
        with contextlib.suppress(OSError):
            self._conn.close()
        self.process.join(timeout=timeout)
        if self.process.is_alive():
            self.kill()


class WorkerPool(Service):
    """``workers`` supervised validation processes.

    ``await run(function, args, timeout)`` runs ``function(*args)`` in an
    idle worker and returns its result; it raises WorkerFailure when the
    worker died or the call passed ``timeout`` (the worker is then
    killed). Either way the worker is replaced in the background, and the
    pool keeps its size. ``alive`` says how many workers can take a call.
    """

    def __init__(self, workers: int, warm_up: Callable[[], object] | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.size = workers
        self._warm_up = warm_up
        # spawn, not fork: the parent runs threads (gRPC, OpenTelemetry).
        self._context = multiprocessing.get_context("spawn")
        # Last in, first out: the warmest worker first (module docstring).
        self._idle: asyncio.LifoQueue[_Worker] = asyncio.LifoQueue()
        self._workers: set[_Worker] = set()
        self._busy: set[_Worker] = set()
        self._replacing: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def alive(self) -> int:
        return sum(1 for w in self._workers if w.process.is_alive())

    @property
    def pids(self) -> list[int]:
        return sorted(w.pid for w in self._workers if w.pid is not None)

    async def on_start(self) -> None:
        # Compile the artefacts in every worker before the service says
        # SERVING, so the first invoices do not pay for it.
        await asyncio.gather(*(self._add() for _ in range(self.size)))
        log.info("validation workers ready: %d process(es) %s", len(self._workers), self.pids)

    async def _add(self) -> None:
        worker = await asyncio.to_thread(_Worker, self._context, self._warm_up, self._exited)
        self._workers.add(worker)
        try:
            await worker.started(START_TIMEOUT_SECONDS)
        except WorkerFailure:
            self._workers.discard(worker)
            raise
        self._idle.put_nowait(worker)

    def _exited(self, worker: _Worker) -> None:
        """A worker's reply pipe closed. A call it was running fails on its
        own (and ``run`` replaces it); an idle one is replaced now."""
        if worker in self._workers and worker not in self._busy and not self._closing:
            self._replace(worker, "crashed")
            log.warning("idle validation worker %s died (%s); replacing it", worker.pid, worker._exit_status())

    def _replace(self, worker: _Worker, reason: str) -> None:
        self._workers.discard(worker)
        worker.kill()
        if self._closing:
            return
        WORKER_RESTARTS.add(1, {"reason": reason})
        task = asyncio.get_running_loop().create_task(self._restart(), name="replace validation worker")
        self._replacing.add(task)
        task.add_done_callback(self._replacing.discard)

    async def _restart(self) -> None:
        delay = RESTART_BACKOFF_SECONDS
        while not self._closing:
            try:
                await self._add()
                log.info("validation worker replaced: %d of %d alive", self.alive, self.size)
                return
            except Exception:
                log.exception("validation worker could not start; trying again in %.0fs", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)

    async def _next_idle(self) -> _Worker:
        while True:
            worker = await self._idle.get()
            if worker not in self._workers:
                continue  # died while idle, and already replaced
            if worker.process.is_alive():
                return worker
            # Killed while idle, its pipe's end not read yet: replace it,
            # and give the call to a worker that can take it.
            log.warning("validation worker %s found dead (%s)", worker.pid, worker.process.exitcode)
            self._replace(worker, "crashed")

    async def run(self, function: Callable[..., Any], args: tuple[Any, ...], timeout: float) -> Any:
        worker = await self._next_idle()
        self._busy.add(worker)
        try:
            return await self._call(worker, function, args, timeout)
        finally:
            self._busy.discard(worker)

    async def _call(self, worker: _Worker, function: Callable[..., Any], args: tuple[Any, ...], timeout: float) -> Any:
        try:
            result = await worker.call(function, args, timeout)
        except WorkerFailure as failure:
            log.warning("validation worker %s replaced: %s", worker.pid, failure)
            self._replace(worker, failure.reason)
            raise
        except asyncio.CancelledError:
            # The worker may be mid-call: its answer would reach the next caller.
            self._replace(worker, "cancelled")
            raise
        except BaseException:
            self._idle.put_nowait(worker)  # the function raised; the worker is fine
            raise
        self._idle.put_nowait(worker)
        return result

    async def on_stop(self) -> None:
        self._closing = True
        for task in list(self._replacing):
            task.cancel()
        await asyncio.gather(*self._replacing, return_exceptions=True)
        await asyncio.gather(*(asyncio.to_thread(w.stop, 10.0) for w in list(self._workers)))
        self._workers.clear()
