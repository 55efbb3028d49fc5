"""Each service's plaintext health port (GRPC_HEALTH_PORT) answers
grpc.health.v1 for probes that speak no TLS (the kubelet's), and nothing else:
no API, no reflection."""

from __future__ import annotations

import os

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2_grpc
from invoicing.v1 import ingest_pb2, ingest_pb2_grpc

from tests.support import Stack

pytestmark = pytest.mark.stack

SERVICES = ("INGEST", "VALIDATE", "ROUTE", "STATUS")


def _health_addr(name: str) -> str:
    addr = os.environ.get(f"{name}_HEALTH_ADDR")
    if not addr:
        pytest.fail(f"{name}_HEALTH_ADDR not set: run the suite with `make test` (it writes .run/env)")
    return addr


@pytest.mark.parametrize("name", SERVICES)
async def test_health_port_says_serving_in_plaintext(stack: Stack, name: str) -> None:
    async with grpc.aio.insecure_channel(_health_addr(name)) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_health_port_serves_no_api_and_no_reflection(stack: Stack) -> None:
    async with grpc.aio.insecure_channel(_health_addr("INGEST")) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await ingest_pb2_grpc.IngestServiceStub(channel).SubmitInvoice(ingest_pb2.SubmitInvoiceRequest(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED

        # No request is written: the server refuses an unknown method on the
        # call's headers alone, and a write racing that refusal can replace
        # the server's status on the client with INTERNAL ("Failed
        # execute_batch"; grpc/grpc issue 36066).
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(timeout=5)
        assert await reflection.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_tls_port_refuses_plaintext(stack: Stack) -> None:
    # The health port is an addition: the API port still has no plaintext.
    async with grpc.aio.insecure_channel(stack.ingest) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
