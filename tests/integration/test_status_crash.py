"""Exactly-once effect under a crash: the status service is SIGKILLed while
it works through a batch, then restarted. Every invoice must end with each
transition recorded once in the history and published once on the status
topic."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from invoicing.v1 import ingest_pb2, ingest_pb2_grpc, status_pb2, status_pb2_grpc

from invoicectl.kafka_follow import StatusFollower
from invoicectl.reconcile import reconcile
from tests.support import (
    FINAL,
    ROOT,
    Caller,
    Stack,
    anonymous_channel,
    collect_until_final,
    new_account,
    run_stack,
    unique_invoice,
)

pytestmark = pytest.mark.stack

BATCH = 300


def _status_pid() -> int:
    run_dir = Path(os.environ.get("STACK_RUN_DIR", ROOT / ".run"))
    return int((run_dir / "pids" / "status.pid").read_text())


async def _watch(
    stack: Stack, caller: Caller, since: datetime, from_position: int, count: int
) -> list[status_pb2.WatchInvoicesResponse]:
    flt = status_pb2.InvoiceFilter()
    flt.received_from.FromDatetime(since)
    got: list[status_pb2.WatchInvoicesResponse] = []
    # As the submitter, which sees every event of its invoices (a party
    # other than the submitter does not see the deposit, 200).
    async with caller.channel(stack.status) as channel:
        call = status_pb2_grpc.StatusServiceStub(channel).WatchInvoices(
            status_pb2.WatchInvoicesRequest(filter=flt, from_position=from_position)
        )
        async for reply in call:
            got.append(reply)
            if len(got) == count:
                call.cancel()
                break
    return got


async def test_sigkill_mid_batch_loses_and_doubles_nothing(stack: Stack) -> None:
    since = datetime.now(UTC)
    account = new_account()
    follower = StatusFollower(stack.kafka)
    await follower.start()
    try:
        docs = [unique_invoice("ubl-invoice-valid.xml")[0] for _ in range(BATCH)]

        async def requests() -> AsyncIterator[ingest_pb2.SubmitInvoiceRequest]:
            for i, doc in enumerate(docs):
                yield ingest_pb2.SubmitInvoiceRequest(document=doc, filename=f"crash-{i}.xml")

        async with anonymous_channel(stack.ingest) as channel:
            stub = ingest_pb2_grpc.IngestServiceStub(channel)
            replies = [r async for r in stub.SubmitInvoices(requests(), metadata=account.metadata(), timeout=300)]
        ids = [r.invoice_id for r in replies]
        assert len(set(ids)) == BATCH

        # Kill once the service is visibly in the middle of the batch.
        wanted = set(ids)
        seen = 0
        final: set[str] = set()
        async for event in follower.events():
            if event.invoice_id in wanted:
                seen += 1
                if event.status_code in FINAL:
                    final.add(event.invoice_id)
                if seen >= BATCH // 2:
                    break
        # A watcher that got part of the stream before the crash...
        before = await asyncio.wait_for(_watch(stack, account, since, 1, 50), 60)
        pid = _status_pid()
        os.kill(pid, signal.SIGKILL)

        # `stack up` restarts what is not running and waits for its health.
        await asyncio.get_running_loop().run_in_executor(None, run_stack, "up")
        assert _status_pid() != pid

        # The follower goes on where it stopped: it misses nothing.
        await collect_until_final(follower, wanted - final, timeout=180)
    finally:
        await follower.stop()

    result = await reconcile(stack.database_url, stack.kafka, ids)
    assert result.ok, result.problems
    assert result.history_rows == result.status_events == 2 * BATCH

    # ...resumes after the restart from its last position and gets exactly
    # the rest: every transition once, none skipped.
    after = await asyncio.wait_for(_watch(stack, account, since, before[-1].position, 2 * BATCH - 50), 60)
    positions = [r.position for r in before + after]
    assert positions == sorted(positions) and len(set(positions)) == 2 * BATCH
    per_invoice: dict[str, list[int]] = {}
    for r in before + after:
        per_invoice.setdefault(r.event.invoice_id, []).append(r.event.status_code)
    assert set(per_invoice) == wanted
    assert all(codes[0] == 200 and codes[-1] in (201, 203) and len(codes) == 2 for codes in per_invoice.values())
