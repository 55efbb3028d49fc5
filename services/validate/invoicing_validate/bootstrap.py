"""Composition root for the validate service."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from mode import Service

from invoicing_common.grpc_server import GrpcServer
from invoicing_common.kafka import StreamApp
from invoicing_validate import agents, checks
from invoicing_validate.settings import ValidateSettings
from invoicing_validate.workers import WorkerPool

log = logging.getLogger(__name__)


class PoolHealth(Service):
    """Health follows the workers: NOT_SERVING while none can take a
    document (all dead and not yet replaced), SERVING again once one can."""

    def __init__(self, pool: WorkerPool, server: GrpcServer, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._pool = pool
        self._server = server
        self._serving = True

    @Service.timer(1.0)
    async def _check(self) -> None:
        serving = self._pool.alive > 0
        if serving != self._serving and self._server.ready:
            self._serving = serving
            await self._server.set_serving(serving)
            log.warning("validation workers alive: %d of %d", self._pool.alive, self._pool.size)


@dataclass
class Validate:
    app: StreamApp
    pool: WorkerPool
    health: PoolHealth
    grpc: GrpcServer


def bootstrap(settings: ValidateSettings) -> Validate:
    app = StreamApp(settings.otel_service_name, settings)
    pool = WorkerPool(settings.validate_workers, warm_up=checks.warm_up)
    agents.register(
        app, pool, settings.validate_concurrency, settings.validate_time_limit_seconds, settings.validate_attempts
    )
    # Health and reflection only: no method needs a policy.
    server = GrpcServer(settings, lambda _server: [], policy={})
    return Validate(app=app, pool=pool, health=PoolHealth(pool, server), grpc=server)
