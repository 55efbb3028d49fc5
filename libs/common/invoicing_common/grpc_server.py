"""grpc.aio server with health checking, reflection and a graceful stop.

Health says SERVING only once the owner calls ``mark_serving`` (after its
dependencies are ready) and NOT_SERVING as soon as shutdown starts, so load
balancers stop sending work before in-flight calls are drained.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from mode import Service

from invoicing_common.settings import GrpcSettings

log = logging.getLogger(__name__)

# Adds servicers to the server and returns their full service names.
Registrar = Callable[[grpc.aio.Server], Sequence[str]]


class GrpcServer(Service):
    def __init__(
        self,
        settings: GrpcSettings,
        register: Registrar,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._settings = settings
        self._register = register
        self._interceptors = list(interceptors)
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._service_names: list[str] = []
        self.port: int = 0

    async def on_start(self) -> None:
        limit = self._settings.grpc_max_message_bytes
        server = grpc.aio.server(
            interceptors=self._interceptors,
            options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)],
        )
        self._service_names = list(self._register(server))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        names = [
            *self._service_names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ]
        reflection.enable_server_reflection(names, server)
        address = f"{self._settings.grpc_host}:{self._settings.grpc_port}"
        self.port = server.add_insecure_port(address)
        if self.port == 0:
            raise RuntimeError(f"cannot bind gRPC server to {address}")
        for name in ["", *self._service_names]:
            await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await server.start()
        self._server = server
        log.info("gRPC server listening on %s:%d", self._settings.grpc_host, self.port)

    async def mark_serving(self) -> None:
        for name in ["", *self._service_names]:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("ready: health SERVING")

    async def on_stop(self) -> None:
        if self._server is None:
            return
        await self._health.enter_graceful_shutdown()
        await self._server.stop(self._settings.shutdown_grace_seconds)
        self._server = None
        log.info("gRPC server stopped")
