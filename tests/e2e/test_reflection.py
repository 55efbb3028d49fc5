"""A stock gRPC client can discover every service through reflection."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.support import Stack, demo_channel

pytestmark = pytest.mark.stack


async def _list_services(addr: str) -> set[str]:
    async with demo_channel(addr) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def ask() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        async for reply in stub.ServerReflectionInfo(ask(), timeout=10):
            return {s.name for s in reply.list_services_response.service}
    return set()


async def test_reflection_lists_the_public_services(stack: Stack) -> None:
    ingest = await _list_services(stack.ingest)
    status = await _list_services(stack.status)
    assert "invoicing.v1.IngestService" in ingest
    assert "invoicing.v1.StatusService" in status
    for services in (ingest, status, await _list_services(stack.validate), await _list_services(stack.route)):
        assert "grpc.health.v1.Health" in services
        assert "grpc.reflection.v1alpha.ServerReflection" in services
