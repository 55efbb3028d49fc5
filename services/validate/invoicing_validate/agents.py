"""faust agent: received -> validated. Thin; the work is in checks/domain."""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor

import faust
from invoicing.v1 import events_pb2

from invoicing_common import topics
from invoicing_common.kafka import trace_headers
from invoicing_common.streams import PermanentError, Record, process, raw_topic, send
from invoicing_validate.checks import run_checks
from invoicing_validate.domain import validated_event


def decode_received(record: Record) -> events_pb2.InvoiceReceived:
    if record.value is None:
        raise PermanentError("record has no value")
    event = events_pb2.InvoiceReceived.FromString(record.value)
    if not event.invoice.invoice_id:
        raise PermanentError("InvoiceReceived without invoice.invoice_id")
    return event


def register(app: faust.App, executor: Executor, concurrency: int) -> None:
    received = raw_topic(app, topics.RECEIVED)
    validated = raw_topic(app, topics.VALIDATED)
    dlq = raw_topic(app, topics.DLQ)

    async def handle(record: Record) -> None:
        event = decode_received(record)
        loop = asyncio.get_running_loop()
        # CPU-bound: run in the process pool so the loop keeps consuming.
        report = await loop.run_in_executor(executor, run_checks, event.document, event.invoice.filename)
        out = validated_event(event, report)
        await send(validated, out.invoice.invoice_id, out.SerializeToString(), trace_headers())

    @app.agent(received, name="validate", concurrency=concurrency)
    async def validate(stream: faust.StreamT[bytes]) -> None:
        async for _ in process(stream.events(), handle, dlq=dlq, consumer_group=app.conf.id):
            pass
