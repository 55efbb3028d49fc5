"""Trace context crosses a Kafka hop: the producer's span context travels in
the record headers and the consumer re-extracts it, even when the record is
handled on another thread, where contextvars from the producer side do not
exist (in production the consumer is another process)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from invoicing_common.kafka.handling import Record, handle_record
from invoicing_common.telemetry import produce_span, tracer


class NoDlq:
    async def send(self, **kwargs: object) -> None:
        raise AssertionError("nothing should be dead-lettered")


@pytest.fixture
def exporter(memory_spans: InMemorySpanExporter) -> InMemorySpanExporter:
    memory_spans.clear()
    return memory_spans


def _consume_on_another_thread(headers: list[tuple[str, bytes]]) -> str:
    seen: list[str] = []

    async def handler(record: Record) -> None:
        with tracer().start_as_current_span("validate invoice") as span:
            seen.append(format(span.get_span_context().trace_id, "032x"))

    record = Record("invoicing.invoice.received.v1", 3, 42, b"inv-1", b"x", headers)

    async def run() -> None:
        await handle_record(record, handler, dlq=NoDlq(), consumer_group="invoicing-validate")

    worker = threading.Thread(target=lambda: asyncio.run(run()))
    worker.start()
    worker.join(timeout=30)
    return seen[0]


def test_consumer_spans_continue_the_producer_trace_across_threads(exporter: InMemorySpanExporter) -> None:
    exporter.clear()
    with tracer().start_as_current_span("SubmitInvoice", kind=SpanKind.SERVER) as root:
        with produce_span("invoicing.invoice.received.v1", "inv-1", "evt-1") as headers:
            pass
        root_trace = format(root.get_span_context().trace_id, "032x")
    assert any(k == "traceparent" for k, _ in headers)

    handler_trace = _consume_on_another_thread(headers)

    spans: dict[str, ReadableSpan] = {s.name: s for s in exporter.get_finished_spans()}
    assert handler_trace == root_trace
    send, consume, work = (
        spans["send invoicing.invoice.received.v1"],
        spans["process invoicing.invoice.received.v1"],
        spans["validate invoice"],
    )
    assert send.kind is SpanKind.PRODUCER and consume.kind is SpanKind.CONSUMER
    assert send.parent is not None and send.parent.span_id == spans["SubmitInvoice"].context.span_id
    assert consume.parent is not None and consume.parent.span_id == send.context.span_id
    assert work.parent is not None and work.parent.span_id == consume.context.span_id
    attributes = dict(consume.attributes or {})
    assert attributes["messaging.system"] == "kafka"
    assert attributes["messaging.destination.name"] == "invoicing.invoice.received.v1"
    assert attributes["messaging.destination.partition.id"] == "3"
    assert attributes["messaging.kafka.offset"] == 42
    assert attributes["messaging.consumer.group.name"] == "invoicing-validate"
    assert dict(send.attributes or {})["messaging.message.id"] == "evt-1"


def test_without_headers_the_consumer_starts_a_new_trace(exporter: InMemorySpanExporter) -> None:
    exporter.clear()
    with tracer().start_as_current_span("unrelated") as other:
        other_trace = format(other.get_span_context().trace_id, "032x")
    assert _consume_on_another_thread([]) != other_trace
