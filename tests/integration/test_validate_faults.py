"""The validate service survives its workers, and they do not survive it:
a SIGKILL of one worker costs no invoice (none held at 200, none in the
DLQ), and a SIGKILL of the service leaves no worker behind. On the stack's
own validate service, which is restarted afterwards."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support import Stack, anonymous_channel, collect_until_final, run_stack, submit, unique_invoice

pytestmark = pytest.mark.stack

BATCH = 150


def _service_pid(stack: Stack, name: str) -> int:
    return int((stack.run_dir / "pids" / f"{name}.pid").read_text())


def _state(pid: int) -> str | None:
    """The process's state letter, None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def _workers(pid: int) -> list[int]:
    """The validation workers among ``pid``'s children (multiprocessing also
    runs a resource tracker there)."""
    return [c for c in _children(pid) if b"spawn_main" in _cmdline(c)]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and _state(int(entry)) not in (None, "Z"):
                found.append(int(entry))
    return sorted(found)


async def _until(condition: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)  # polling a process condition, bounded


async def _health(address: str) -> int:
    async with anonymous_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        return int(reply.status)


async def test_a_worker_killed_mid_load_is_replaced_and_no_invoice_is_lost(
    stack: Stack, status_follower: object
) -> None:
    service = _service_pid(stack, "validate")
    workers = _workers(service)
    assert len(workers) >= 1, "the validate service runs worker processes"
    documents = [unique_invoice("ubl-invoice-valid.xml")[0] for _ in range(BATCH)]
    replies = await asyncio.gather(*(submit(stack.ingest, doc, f"kill-{i}.xml") for i, doc in enumerate(documents)))
    ids = {r.invoice_id for r in replies}
    # Kill a worker while the batch is being validated (the acknowledgements
    # are back, the validation of 150 documents takes seconds): whatever it
    # held is tried again on the others.
    victim = workers[0]
    os.kill(victim, signal.SIGKILL)
    events = await collect_until_final(status_follower, ids, timeout=180)  # type: ignore[arg-type]
    finals = {invoice_id: history[-1] for invoice_id, history in events.items()}
    assert {e.status_code for e in finals.values()} == {203}, [
        (e.status_code, e.reason.code, e.reason.text) for e in finals.values() if e.status_code != 203
    ]

    await _until(lambda: len(_workers(service)) == len(workers), "the killed worker was not replaced")
    assert victim not in _workers(service)
    assert await _health(stack.validate) == health_pb2.HealthCheckResponse.SERVING


async def test_a_killed_service_leaves_no_worker_behind(stack: Stack, status_follower: object) -> None:
    service = _service_pid(stack, "validate")
    workers = _children(service)  # the workers and multiprocessing's resource tracker
    assert _workers(service)
    try:
        os.kill(service, signal.SIGKILL)
        await _until(lambda: all(_state(w) in (None, "Z") for w in workers), f"workers {workers} outlived the service")
    finally:
        # `stack up` restarts what is not running and waits for its health.
        await asyncio.get_running_loop().run_in_executor(None, run_stack, "up")
    doc, _ = unique_invoice("cii-invoice-valid.xml")
    invoice_id = (await submit(stack.ingest, doc, "after-restart.xml")).invoice_id
    events = await collect_until_final(status_follower, {invoice_id}, timeout=120)  # type: ignore[arg-type]
    assert events[invoice_id][-1].status_code == 203
