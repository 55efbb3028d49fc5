"""The supervised validation workers: a call that dies or outlives its time
limit fails alone, its worker is replaced, and the pool keeps its size;
workers end with their parent, however it ends. Real processes throughout."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from invoicing_validate.workers import WorkerCrashed, WorkerPool, WorkerTimedOut
from tests.unit import worker_functions as fn

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def pool() -> AsyncIterator[WorkerPool]:
    workers = WorkerPool(2)
    await workers.start()
    try:
        yield workers
    finally:
        await workers.stop()


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_calls_run_in_the_workers(pool: WorkerPool) -> None:
    pid, value = await pool.run(fn.echo, ("x",), timeout=30)
    assert value == "x" and pid in pool.pids and pid != os.getpid()


async def test_an_exception_reaches_the_caller_and_the_worker_stays(pool: WorkerPool) -> None:
    before = pool.pids
    with pytest.raises(ValueError, match="no luck"):
        await pool.run(fn.fail, ("no luck",), timeout=30)
    assert pool.pids == before


async def test_a_call_past_its_time_limit_stops_its_worker_which_is_replaced(pool: WorkerPool) -> None:
    before = set(pool.pids)
    with pytest.raises(WorkerTimedOut, match=r"longer than 0\.5s"):
        await pool.run(fn.slow, (30,), timeout=0.5)
    # Calls go on meanwhile, and a new worker joins: the pool keeps its size.
    results = {(await pool.run(fn.echo, (i,), timeout=60))[1] for i in range(4)}
    assert results == {0, 1, 2, 3}
    deadline = time.monotonic() + 30
    while len(pool.pids) < pool.size:
        assert time.monotonic() < deadline, "the stopped worker was not replaced"
        await asyncio.sleep(0.05)  # polling a readiness condition, bounded
    assert len(set(pool.pids) - before) == 1


async def test_a_worker_that_dies_fails_its_call_alone_and_is_replaced(pool: WorkerPool) -> None:
    with pytest.raises(WorkerCrashed, match="exit code 3"):
        await pool.run(fn.crash, (3,), timeout=30)
    assert (await pool.run(fn.echo, ("after",), timeout=60))[1] == "after"


async def test_a_worker_killed_while_idle_is_replaced_before_it_gets_a_call(pool: WorkerPool) -> None:
    victim = pool.pids[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 10
    # Until the pool can tell it is dead (its pipe read, or the process
    # reaped): "killed while idle" must be true.
    while victim in pool.pids and pool.alive == pool.size:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)  # polling a readiness condition, bounded
    # No call fails: the dead worker is replaced as its pipe closes or, if
    # that has not been read yet, when its turn comes.
    pids = {(await pool.run(fn.echo, (i,), timeout=60))[0] for i in range(6)}
    assert victim not in pids and victim not in pool.pids


async def test_an_idle_worker_that_dies_is_replaced_without_waiting_for_a_call(pool: WorkerPool) -> None:
    victim = pool.pids[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while victim in pool.pids or pool.alive < pool.size:
        assert time.monotonic() < deadline, "the dead idle worker was not replaced"
        await asyncio.sleep(0.05)  # polling a readiness condition, bounded
    assert len(pool.pids) == pool.size


async def test_a_quiet_pool_gives_each_call_to_the_worker_that_finished_last(pool: WorkerPool) -> None:
    # One call at a time: the warm worker takes them all (the module's
    # docstring says why); the other waits for a busier moment.
    pids = [(await pool.run(fn.echo, (i,), timeout=30))[0] for i in range(6)]
    assert len(set(pids)) == 1
    # Two at a time (the second asks while the first is running): both
    # workers take one.
    both = await asyncio.gather(pool.run(fn.echo, ("a",), timeout=30), pool.run(fn.echo, ("b",), timeout=30))
    assert {pid for pid, _ in both} == set(pool.pids)
    assert both[0][0] == pids[0]


async def test_stopping_the_pool_ends_its_workers() -> None:
    workers = WorkerPool(2)
    await workers.start()
    pids = workers.pids
    await workers.stop()
    assert not any(_alive(pid) for pid in pids)


def test_workers_die_with_their_parent_even_by_sigkill() -> None:
    # A parent process that starts a pool, says its workers' pids, and waits.
    script = (
        "import asyncio, sys\n"
        "from invoicing_validate.workers import WorkerPool\n"
        "async def main():\n"
        "    pool = WorkerPool(2)\n"
        "    await pool.start()\n"
        "    print(' '.join(map(str, pool.pids)), flush=True)\n"
        "    await asyncio.Event().wait()\n"
        "asyncio.run(main())\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT, env=dict(os.environ)
    )
    try:
        assert parent.stdout is not None
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2 and all(_alive(p) for p in pids)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in pids):
            assert time.monotonic() < deadline, f"workers {pids} outlived their parent"
            time.sleep(0.1)  # polling for the kernel to end them, bounded
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_large_documents_and_results_cross_the_pipe_on_the_services_event_loop() -> None:
    # The services run uvloop; a pipe watched with its add_reader turns
    # non-blocking, and a message larger than the pipe's buffer then failed.
    import uvloop

    big = b"x" * (5 * 1024 * 1024)

    async def run() -> tuple[int, object]:
        workers = WorkerPool(1)
        await workers.start()
        try:
            result: tuple[int, object] = await workers.run(fn.echo, (big,), timeout=60)
            return result
        finally:
            await workers.stop()

    _pid, echoed = uvloop.run(run())
    assert echoed == big
