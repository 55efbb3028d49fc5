"""One journey, one trace, with an in-memory exporter.

The four services run inside this test process (the stack's own instances
are stopped for the duration, so every record is handled here), on the
stack's real Kafka and PostgreSQL. All spans land in the in-memory exporter;
the consumer group on each CONSUMER span tells which service handled it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import AsyncIterator

import pytest
from mode import Service
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from invoicectl.kafka_follow import StatusFollower
from tests.support import Stack, collect_until_final, demo, free_port, run_stack, submit, unique_invoice

pytestmark = pytest.mark.stack


@pytest.fixture
async def in_process(stack: Stack) -> AsyncIterator[str]:
    """Stops the stack's services, runs all four here; yields ingest's address."""
    from invoicing_ingest.bootstrap import bootstrap as ingest
    from invoicing_ingest.settings import IngestSettings
    from invoicing_route.bootstrap import bootstrap as route
    from invoicing_route.settings import RouteSettings
    from invoicing_status.bootstrap import bootstrap as status
    from invoicing_status.settings import StatusSettings
    from invoicing_validate.bootstrap import bootstrap as validate
    from invoicing_validate.settings import ValidateSettings

    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, run_stack, "stop-services")
    started: list[Service] = []
    try:
        i = ingest(IngestSettings(grpc_port=free_port(), **stack.in_process_settings("ingest")))
        v = validate(
            ValidateSettings(grpc_port=free_port(), validate_workers=1, **stack.in_process_settings("validate"))
        )
        r = route(RouteSettings(grpc_port=free_port(), **stack.in_process_settings("route")))
        st = status(StatusSettings(grpc_port=free_port(), **stack.in_process_settings("status")))
        services: list[Service] = [
            i.database, *i.archive, i.relay, i.grpc,
            v.database, *v.archive, v.pool, v.grpc, v.app,
            r.database, r.relay, r.feed, r.grpc, r.app,
            st.database, st.relay, st.notifier, st.grpc, st.app,
        ]  # fmt: skip
        for service in services:
            await service.start()
            started.append(service)
        # Ready when every stream consumer owns its partitions.
        deadline = time.monotonic() + 120
        while not all(app.assignment() for app in (v.app, r.app, st.app)):
            assert time.monotonic() < deadline, "stream consumers got no partitions"
            await asyncio.sleep(0.2)  # polling a readiness condition, bounded by the deadline
        yield f"127.0.0.1:{i.grpc.port}"
    finally:
        for service in reversed(started):
            await service.stop()
        await loop.run_in_executor(None, run_stack, "up")


def _descends(span: ReadableSpan, root_id: int, by_id: dict[int, ReadableSpan]) -> bool:
    current: ReadableSpan | None = span
    for _ in range(100):
        if current is None:
            return False
        if current.context.span_id == root_id:
            return True
        current = by_id.get(current.parent.span_id) if current.parent is not None else None
    return False


# The spans one invoice's journey leaves, by name and consuming service.
_JOURNEY = {
    ("store receipt", None),
    ("send invoicing.invoice.received.v1", None),
    ("process invoicing.invoice.received.v1", "invoicing-validate"),
    ("validate invoice", None),
    ("send invoicing.invoice.validated.v1", None),
    ("process invoicing.invoice.validated.v1", "invoicing-route"),
    ("route invoice", None),
    ("send invoicing.invoice.routed.v1", None),
    ("process invoicing.invoice.received.v1", "invoicing-status"),
    ("process invoicing.invoice.validated.v1", "invoicing-status"),
    ("process invoicing.invoice.routed.v1", "invoicing-status"),
    ("apply status", None),
    ("send invoicing.invoice.status.v1", None),
}


def _seen(memory_spans: InMemorySpanExporter, trace_id: str) -> set[tuple[str, str | None]]:
    """(name, consumer group) of the finished spans of one trace."""
    out: set[tuple[str, str | None]] = set()
    for s in memory_spans.get_finished_spans():
        if format(s.context.trace_id, "032x") == trace_id:
            group = (s.attributes or {}).get("messaging.consumer.group.name")
            out.add((s.name, str(group) if group is not None else None))
    return out


async def _wait_for_journey(memory_spans: InMemorySpanExporter, trace_id: str) -> None:
    provider = trace.get_tracer_provider()
    deadline = time.monotonic() + 30
    while not _seen(memory_spans, trace_id) >= _JOURNEY:
        assert time.monotonic() < deadline, f"missing spans: {_JOURNEY - _seen(memory_spans, trace_id)}"
        getattr(provider, "force_flush", lambda: None)()
        await asyncio.sleep(0.1)  # spans end as the outbox publishes; bounded wait


async def test_one_journey_gives_one_trace_across_the_four_services(
    memory_spans: InMemorySpanExporter, in_process: str, stack: Stack
) -> None:
    follower = StatusFollower(stack.kafka)
    await follower.start()
    try:
        erp_trace, erp_span = secrets.token_hex(16), secrets.token_hex(8)
        doc, _ = unique_invoice("ubl-invoice-valid.xml")
        reply = await submit(
            in_process, doc, "in-memory.xml",
            metadata=demo().metadata(("traceparent", f"00-{erp_trace}-{erp_span}-01")),
        )  # fmt: skip
        events = await collect_until_final(follower, {reply.invoice_id})
    finally:
        await follower.stop()
    assert events[reply.invoice_id][-1].trace_id == erp_trace

    await _wait_for_journey(memory_spans, erp_trace)

    spans = [s for s in memory_spans.get_finished_spans() if format(s.context.trace_id, "032x") == erp_trace]
    by_id = {s.context.span_id: s for s in spans}
    roots = [s for s in spans if s.kind is SpanKind.SERVER and s.name.endswith("/SubmitInvoice")]
    assert len(roots) == 1
    root = roots[0]
    assert root.parent is not None and format(root.parent.span_id, "016x") == erp_span
    assert all(_descends(s, root.context.span_id, by_id) for s in spans), "one tree under SubmitInvoice"
    validation = next(s for s in spans if s.name == "validate invoice")
    assert (validation.attributes or {})["invoicing.format"] == "ubl-invoice"
    # The receipt's group commit: the outbox relay's send continues "store
    # receipt"; the batch's own trace ("store receipts") links back to it.
    stored = next(s for s in spans if s.name == "store receipt")
    send = next(s for s in spans if s.name == "send invoicing.invoice.received.v1")
    assert send.parent is not None and send.parent.span_id == stored.context.span_id
    batches = [
        s
        for s in memory_spans.get_finished_spans()
        if s.name == "store receipts" and any(link.context.span_id == stored.context.span_id for link in s.links)
    ]
    assert len(batches) == 1 and format(batches[0].context.trace_id, "032x") != erp_trace
    routing = next(s for s in spans if s.name == "route invoice")
    assert (routing.attributes or {})["invoicing.routing.outcome"] == "routed"
    applied: set[int] = set()
    for s in spans:
        codes = (s.attributes or {}).get("invoicing.status_codes") if s.name == "apply status" else None
        if isinstance(codes, tuple | list):
            applied |= {int(c) for c in codes}
    outcome = 203 if os.environ.get("PLATFORM_ID", "local") == "local" else 201
    assert {200, outcome} <= applied


async def test_a_caller_that_does_not_sample_gets_no_span_anywhere(
    memory_spans: InMemorySpanExporter, in_process: str, stack: Stack
) -> None:
    """The sampling decision travels with the invoice: a traceparent whose
    flags say "not sampled" (an ERP's or gateway's choice, or a ratio
    sampler's at ingest) leaves no span in any service, while the trace id
    still reaches the status events. A hop that lost the flag would record
    spans of its own under that trace."""
    follower = StatusFollower(stack.kafka)
    await follower.start()
    try:
        quiet_trace, sampled_trace = secrets.token_hex(16), secrets.token_hex(16)
        quiet_doc, _ = unique_invoice("ubl-invoice-valid.xml")
        sampled_doc, _ = unique_invoice("ubl-invoice-valid.xml")
        quiet = await submit(
            in_process, quiet_doc, "not-sampled.xml",
            metadata=demo().metadata(("traceparent", f"00-{quiet_trace}-{secrets.token_hex(8)}-00")),
        )  # fmt: skip
        sampled = await submit(
            in_process, sampled_doc, "sampled.xml",
            metadata=demo().metadata(("traceparent", f"00-{sampled_trace}-{secrets.token_hex(8)}-01")),
        )  # fmt: skip
        events = await collect_until_final(follower, {quiet.invoice_id, sampled.invoice_id})
    finally:
        await follower.stop()
    assert events[quiet.invoice_id][-1].trace_id == quiet_trace
    assert events[sampled.invoice_id][-1].trace_id == sampled_trace
    # The sampled invoice, submitted after the other and through the same
    # hops, has ended every span of its journey: the quiet one's would have
    # ended by now too.
    await _wait_for_journey(memory_spans, sampled_trace)
    assert _seen(memory_spans, quiet_trace) == set()
