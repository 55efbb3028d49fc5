"""Composition root for the validate service."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from mode import Service

from invoicing_common.grpc_server import GrpcServer
from invoicing_common.streams import StreamApp
from invoicing_validate import agents, checks
from invoicing_validate.settings import ValidateSettings

log = logging.getLogger(__name__)


class WorkerPool(Service):
    """Owns the validation processes; stopped after the stream app has drained."""

    def __init__(self, workers: int, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._workers = workers
        # spawn, not fork: the parent runs threads (gRPC, OpenTelemetry).
        self.executor = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))

    async def on_start(self) -> None:
        # Compile the official artefacts in every worker before the service
        # says SERVING, so the first invoices do not pay for it. Each warm-up
        # blocks its worker until all have started, so each lands on its own.
        loop = asyncio.get_running_loop()
        pids = await asyncio.gather(
            *(loop.run_in_executor(self.executor, checks.warm_up) for _ in range(self._workers))
        )
        log.info("validation workers ready: %d process(es)", len(set(pids)))

    async def on_stop(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=False)


@dataclass
class Validate:
    app: StreamApp
    pool: WorkerPool
    grpc: GrpcServer


def bootstrap(settings: ValidateSettings) -> Validate:
    app = StreamApp(settings.otel_service_name, settings)
    pool = WorkerPool(settings.validate_workers)
    agents.register(app, pool.executor, settings.validate_workers, settings.validate_concurrency)
    # Health and reflection only: no method needs a policy.
    server = GrpcServer(settings, lambda _server: [], policy={})
    return Validate(app=app, pool=pool, grpc=server)
