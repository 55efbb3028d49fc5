"""Every service stops cleanly on SIGTERM: health turns NOT_SERVING, the
process drains and exits 0. Runs a second instance of each service beside
the stack, on a free port, against the same Kafka and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support import Stack, demo_channel, free_port, wait_serving

pytestmark = pytest.mark.stack


@pytest.mark.parametrize("module", ["invoicing_ingest", "invoicing_validate", "invoicing_route", "invoicing_status"])
async def test_sigterm_turns_health_not_serving_and_exits_cleanly(stack: Stack, module: str, tmp_path: object) -> None:
    port = free_port()
    addr = f"127.0.0.1:{port}"
    own = stack.service_env(module.removeprefix("invoicing_"))
    env = {**os.environ, **own, "GRPC_PORT": str(port), "METRICS_PORT": "0", "LOG_LEVEL": "INFO"}
    proc = subprocess.Popen(  # noqa: ASYNC220 - started once, then only signalled
        [sys.executable, "-m", module], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        await wait_serving(addr, proc)
        seen: list[int] = []
        async with demo_channel(addr) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=60)
            first = await watch.read()
            seen.append(first.status)
            proc.send_signal(signal.SIGTERM)
            try:
                while (reply := await watch.read()) is not grpc.aio.EOF:
                    seen.append(reply.status)
            except grpc.aio.AioRpcError:
                pass  # the server went away after announcing NOT_SERVING
        code = await asyncio.get_running_loop().run_in_executor(None, lambda: proc.wait(timeout=60))
        output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
        assert seen[0] == health_pb2.HealthCheckResponse.SERVING
        assert health_pb2.HealthCheckResponse.NOT_SERVING in seen, output[-3000:]
        assert code == 0, output[-3000:]
        assert '"level": "error"' not in output, output[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
