"""Health follows what a service needs to work: with PostgreSQL down past
the grace period (HEALTH_DATABASE_GRACE_SECONDS, 15 s), ingest, route and
status say NOT_SERVING (a short outage does not flap them); once it is
back, SERVING again, by themselves, without a restart."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.chaos.harness import alive
from tests.support import Stack, anonymous_channel, run_stack

pytestmark = pytest.mark.stack

GRACE = 15.0  # the stack's HEALTH_DATABASE_GRACE_SECONDS (the default)


def _pid(stack: Stack, name: str) -> int:
    return int((stack.run_dir / "pids" / f"{name}.pid").read_text())


async def _serving(address: str) -> bool:
    async with anonymous_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def _until(addresses: dict[str, str], serving: bool, timeout: float) -> float:
    """Until every service says ``serving``; when that was seen."""
    deadline = time.monotonic() + timeout
    while True:
        states = {name: await _serving(address) for name, address in addresses.items()}
        if all(state == serving for state in states.values()):
            return time.monotonic()
        assert time.monotonic() < deadline, f"after {timeout:.0f}s, serving: {states}"
        await asyncio.sleep(0.25)  # polling the health service, bounded by the deadline


async def test_health_follows_the_database(stack: Stack) -> None:
    addresses = {"ingest": stack.ingest, "route": stack.route, "status": stack.status}
    pids = {name: _pid(stack, name) for name in addresses}
    await _until(addresses, True, 30)
    postgres = _pid(stack, "postgres")
    os.kill(postgres, signal.SIGINT)  # fast shutdown: sessions are cut
    try:
        deadline = time.monotonic() + 60
        # A zombie (the stack's own child, not yet reaped) counts as stopped.
        while alive(postgres):
            assert time.monotonic() < deadline, "postgres did not stop"
            await asyncio.sleep(0.1)  # polling the process, bounded by the deadline
        stopped = time.monotonic()
        not_serving = await _until(addresses, False, GRACE + 30)
        # Not before the grace period (less the probe interval and the
        # shutdown, which the services may have seen coming).
        assert not_serving - stopped > GRACE - 5
    finally:
        await asyncio.get_running_loop().run_in_executor(None, run_stack, "up")
    await _until(addresses, True, 60)
    # They came back by themselves: `stack up` restarted none of them.
    assert {name: _pid(stack, name) for name in addresses} == pids
