"""Two route processes stay consistent: a directory change made through one
instance reaches the other's in-memory index within a second, and both
route the same way."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest
from invoicing.v1 import common_pb2, directory_pb2, directory_pb2_grpc, events_pb2

from tests.support import Stack, demo_channel, free_port, wait_serving

pytestmark = pytest.mark.stack


def _fresh_siren() -> str:
    from tests.integration.test_directory_api import fresh_siren

    return fresh_siren()


async def _decision(addr: str, siren: str) -> directory_pb2.ResolveResponse:
    async with demo_channel(addr) as channel:
        reply: directory_pb2.ResolveResponse = await directory_pb2_grpc.DirectoryServiceStub(channel).Resolve(
            directory_pb2.ResolveRequest(buyer_endpoint=common_pb2.PartyIdentifier(value=siren, scheme="0225")),
            timeout=10,
        )
        return reply


async def test_a_change_through_one_instance_reaches_the_other_within_a_second(stack: Stack) -> None:
    port = free_port()
    second = f"127.0.0.1:{port}"
    proc = subprocess.Popen(  # noqa: ASYNC220 - started once, then only signalled
        [sys.executable, "-m", "invoicing_route"],
        env={**os.environ, **stack.service_env("route"), "GRPC_PORT": str(port), "METRICS_PORT": "0"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await wait_serving(second, proc)
        siren = _fresh_siren()
        assert (await _decision(second, siren)).reason.code == "REJ_ADR"

        async with demo_channel(stack.route) as channel:
            await directory_pb2_grpc.DirectoryServiceStub(channel).Upsert(
                directory_pb2.UpsertRequest(entry=directory_pb2.DirectoryEntry(siren=siren, platform_id="pdp-b")),
                timeout=10,
            )
        changed_at = time.monotonic()
        while True:
            decision = await _decision(second, siren)
            if decision.outcome == events_pb2.ROUTING_OUTCOME_ROUTED:
                break
            assert time.monotonic() - changed_at < 1.0, "the second instance did not see the change within 1 s"
            await asyncio.sleep(0.02)  # polling the other process's state, bounded by the 1 s budget
        first = await _decision(stack.route, siren)
        assert decision.destination_platform == first.destination_platform == "pdp-b"
        assert decision.entry.entry_id == first.entry.entry_id == siren
    finally:
        proc.terminate()
        proc.wait(timeout=60)
