"""grpc.aio server with TLS, authentication, health checking, reflection
and a graceful stop.

The server has a TLS port only (and, when configured, a plaintext port
that serves grpc.health.v1 alone, for the kubelet's probes). Every call but health and reflection needs
a bearer access token from the configured OpenID Connect issuer and the
roles the service's access policy names for the method (docs/security.md);
a method without a policy entry is refused. Health says SERVING only once
the owner calls ``mark_serving`` (after its dependencies are ready) and
NOT_SERVING as soon as shutdown starts, so load balancers stop sending work
before in-flight calls are drained.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from mode import Service
from opentelemetry.instrumentation.grpc import aio_server_interceptor

from invoicing_common.auth.interceptor import AuthInterceptor
from invoicing_common.auth.quotas import RateLimiter, StreamLimiter
from invoicing_common.auth.tls import server_credentials
from invoicing_common.auth.tokens import OidcConfig, TokenVerifier
from invoicing_common.grpc_handlers import responses
from invoicing_common.settings import GrpcSettings
from invoicing_common.telemetry import RPC_DURATION

log = logging.getLogger(__name__)

# Adds servicers to the server and returns their full service names.
Registrar = Callable[[grpc.aio.Server], Sequence[str]]


class GrpcServer(Service):
    def __init__(
        self,
        settings: GrpcSettings,
        register: Registrar,
        policy: Mapping[str, frozenset[str]],
        limited_streams: frozenset[str] = frozenset(),
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._settings = settings
        self._register = register
        self._verifier = TokenVerifier(oidc_config(settings))
        auth = AuthInterceptor(
            self._verifier,
            policy,
            RateLimiter(settings.quota_requests_per_second, settings.quota_burst),
            StreamLimiter(settings.quota_streams),
            limited_streams=limited_streams,
            default_deadline_seconds=settings.grpc_default_deadline_seconds,
            # WatchInvoices ends itself at its token's expiry, saying where
            # to resume; the gate's own end is the backstop.
            stream_grace_seconds=5.0,
        )
        # Server spans (rpc.*, continuing a client's traceparent) and the
        # latency histogram come first, so they cover every other interceptor,
        # refusals included.
        self._interceptors = [aio_server_interceptor(), _DurationInterceptor(), auth, *interceptors]  # type: ignore[no-untyped-call]
        self._server: grpc.aio.Server | None = None
        self._health_server: grpc.aio.Server | None = None
        self._ready = False
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
        assert self._settings.grpc_tls_cert_file is not None and self._settings.grpc_tls_key_file is not None
        credentials = server_credentials(
            str(self._settings.grpc_tls_cert_file),
            str(self._settings.grpc_tls_key_file),
            str(self._settings.grpc_tls_client_ca_file) if self._settings.grpc_tls_client_ca_file else None,
        )
        self.port = server.add_secure_port(address, credentials)
        if self.port == 0:
            raise RuntimeError(f"cannot bind gRPC server to {address}")
        for name in ["", *self._service_names]:
            await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await server.start()
        self._server = server
        log.info("gRPC server listening on %s:%d (TLS)", self._settings.grpc_host, self.port)
        if self._settings.grpc_health_port:
            await self._start_health_server()

    async def _start_health_server(self) -> None:
        # Health only, no interceptors: it answers SERVING or NOT_SERVING and
        # carries nothing a token would protect.
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        address = f"{self._settings.grpc_host}:{self._settings.grpc_health_port}"
        if server.add_insecure_port(address) == 0:
            raise RuntimeError(f"cannot bind the health port to {address}")
        await server.start()
        self._health_server = server
        log.info("gRPC health (plaintext, health only) on %s", address)

    @property
    def ready(self) -> bool:
        """Marked serving once, and not stopping."""
        return self._ready and self._server is not None

    async def mark_serving(self) -> None:
        self._ready = True
        for name in ["", *self._service_names]:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("ready: health SERVING")

    async def set_serving(self, serving: bool) -> None:
        """Health follows a dependency that failed or came back."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *self._service_names]:
            await self._health.set(name, status)
        log.log(logging.INFO if serving else logging.WARNING, "health %s", "SERVING" if serving else "NOT_SERVING")

    async def on_stop(self) -> None:
        if self._server is None:
            return
        await self._health.enter_graceful_shutdown()
        await self._server.stop(self._settings.shutdown_grace_seconds)
        self._server = None
        if self._health_server is not None:
            # Last: probes see NOT_SERVING for the whole drain.
            await self._health_server.stop(0)
            self._health_server = None
        await self._verifier.aclose()
        log.info("gRPC server stopped")


def oidc_config(settings: GrpcSettings) -> OidcConfig:
    return OidcConfig(
        issuer=settings.oidc_issuer,
        audience=settings.oidc_audience,
        jwks_url=settings.oidc_jwks_url,
        ca_file=str(settings.oidc_ca_file) if settings.oidc_ca_file else None,
        leeway_seconds=settings.oidc_clock_skew_seconds,
        jwks_max_age_seconds=settings.oidc_jwks_max_age_seconds,
        roles_claim=settings.oidc_roles_claim,
        sirens_claim=settings.oidc_sirens_claim,
    )


class _DurationInterceptor(grpc.aio.ServerInterceptor):
    """Records rpc.server.duration (ms) by method and status code."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        service, _, name = method.lstrip("/").rpartition("/")

        def record(start: float, code: str) -> None:
            RPC_DURATION.record(
                (time.perf_counter() - start) * 1000,
                {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name, "rpc.grpc.status_code": code},
            )

        def status_of(context: grpc.aio.ServicerContext) -> str:
            code = context.code()
            return code.name if isinstance(code, grpc.StatusCode) else "OK"

        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                start = time.perf_counter()
                try:
                    return await inner_uu(request, context)
                finally:
                    record(start, status_of(context))

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                start = time.perf_counter()
                try:
                    async for item in responses(inner_us(request, context)):
                        yield item
                finally:
                    record(start, status_of(context))

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_unary is not None:
            inner_su = handler.stream_unary

            async def stream_unary(requests: Any, context: grpc.aio.ServicerContext) -> Any:
                start = time.perf_counter()
                try:
                    return await inner_su(requests, context)
                finally:
                    record(start, status_of(context))

            return grpc.stream_unary_rpc_method_handler(
                stream_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_stream is not None:
            inner_ss = handler.stream_stream

            async def stream_stream(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                start = time.perf_counter()
                try:
                    async for item in responses(inner_ss(requests, context)):
                        yield item
                finally:
                    record(start, status_of(context))

            return grpc.stream_stream_rpc_method_handler(
                stream_stream, handler.request_deserializer, handler.response_serializer
            )
        return handler
