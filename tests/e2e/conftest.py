"""The buyer directory seed every end-to-end test relies on: the buyers of
samples/*.xml, served by this platform, imported once per session through
DirectoryService.Import (the same rows `invoicectl directory import` sends)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from invoicing.v1 import directory_pb2, directory_pb2_grpc

from invoicectl.directory_cmd import (
    ENTRY_COLUMNS,
    SERVICE_COLUMNS,
    Filler,
    Rejected,
    fill_entry,
    fill_service,
    read_batches,
)
from tests.support import SAMPLES, Stack, demo_channel


async def import_csv(
    route_addr: str, path: Path, columns: tuple[str, ...], fill: Filler
) -> tuple[directory_pb2.ImportResponse, list[Rejected]]:
    """Import a directory CSV through the gRPC Import stream; returns the
    server's answer and the rows the reader itself refused."""
    local: list[Rejected] = []
    with path.open(newline="", encoding="utf-8-sig") as source:

        async def requests() -> AsyncIterator[directory_pb2.ImportRequest]:
            for request, _ in read_batches(source, columns, fill, local):
                yield request

        async with demo_channel(route_addr) as channel:
            stub = directory_pb2_grpc.DirectoryServiceStub(channel)
            reply: directory_pb2.ImportResponse = await stub.Import(requests(), timeout=120)
    return reply, local


@pytest.fixture(scope="session", autouse=True)
def directory_seed(stack: Stack) -> None:
    async def seed() -> None:
        for name, columns, fill in (
            ("directory.csv", ENTRY_COLUMNS, fill_entry),
            ("directory-services.csv", SERVICE_COLUMNS, fill_service),
        ):
            reply, local = await import_csv(stack.route, SAMPLES / name, columns, fill)
            assert not local and reply.rejected_count == 0, (name, local, list(reply.rejected))

    asyncio.run(seed())
