"""Health that follows what a service needs to do its work.

gRPC health says SERVING once a service is ready. ``HealthMonitor`` turns
it NOT_SERVING while any of the service's checks fails (the consume loop
has died, no validation worker is alive, the database has been unreachable
past a grace period) and SERVING again when they pass: an orchestrator
stops sending work to, or restarts, an instance that cannot do it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from mode import Service

from invoicing_common.db import Database
from invoicing_common.grpc_server import GrpcServer

log = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[bool]]


@dataclass(frozen=True)
class Check:
    name: str
    probe: Probe


def stream_alive(app: object) -> Check:
    """The stream runtime's consume loop still runs."""

    async def probe() -> bool:
        return bool(getattr(app, "consuming", False))

    return Check("consume loop", probe)


def database_reachable(
    database: Database, grace_seconds: float, timeout: float = 2.0, clock: Callable[[], float] = time.monotonic
) -> Check:
    """The database answers, or has not been silent for ``grace_seconds``
    (a restart or a failover within the grace does not flap the health)."""
    last_ok = clock()

    async def probe() -> bool:
        nonlocal last_ok
        try:
            await asyncio.wait_for(database.pool.fetchval("SELECT 1"), timeout)
        except Exception:  # noqa: BLE001 - any failure to answer counts
            return clock() - last_ok < grace_seconds
        last_ok = clock()
        return True

    return Check("database", probe)


class HealthMonitor(Service):
    def __init__(self, server: GrpcServer, checks: Sequence[Check], interval: float = 1.0, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._server = server
        self._checks = list(checks)
        self._interval = interval
        self.failing: list[str] = []

    async def evaluate(self) -> list[str]:
        """Run every check; the names of those failing."""
        results = await asyncio.gather(*(c.probe() for c in self._checks), return_exceptions=True)
        return [c.name for c, ok in zip(self._checks, results, strict=True) if ok is not True]

    async def step(self) -> None:
        """Check once; tell the health service when serving changes."""
        if not self._server.ready:
            return  # not serving yet, or stopping: nothing to follow
        failing = await self.evaluate()
        if failing == self.failing:
            return
        if failing:
            log.warning("health NOT_SERVING: %s failing", ", ".join(failing))
        else:
            log.info("health SERVING again: every check passes")
        if bool(failing) != bool(self.failing):
            await self._server.set_serving(not failing)
        self.failing = failing

    @Service.task
    async def _watch(self) -> None:
        while not self.should_stop:
            await self.sleep(self._interval)
            await self.step()
