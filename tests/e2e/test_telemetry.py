"""One trace per invoice, exported over real OTLP/gRPC.

The test starts its own OTLP receiver (the collector's TraceService and
MetricsService, from opentelemetry-proto), restarts the four services with
OTEL_EXPORTER_OTLP_ENDPOINT pointing at it, and restores them afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2 as otel_common
from opentelemetry.proto.trace.v1 import trace_pb2

from tests.support import Stack, collect_until_final, demo, run_stack, submit, unique_invoice

pytestmark = pytest.mark.stack

SERVICES = {"invoicing-ingest", "invoicing-validate", "invoicing-route", "invoicing-status"}
METRICS = {
    "invoicing.submissions",
    "invoicing.validation.duration",
    "invoicing.validation.findings",
    "invoicing.routing.outcomes",
    "invoicing.status.transitions",
    "invoicing.e2e.latency",
    "messaging.kafka.consumer.lag",
    "rpc.server.duration",
}


def _value(v: otel_common.AnyValue) -> object:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


@dataclass
class ReceivedSpan:
    service: str
    span: trace_pb2.Span

    @property
    def attributes(self) -> dict[str, object]:
        return {a.key: _value(a.value) for a in self.span.attributes}


@dataclass
class Receiver:
    spans: list[ReceivedSpan] = field(default_factory=list)
    metrics: dict[str, set[str]] = field(default_factory=dict)  # metric name -> services
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add_spans(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        for rs in request.resource_spans:
            service = next((str(_value(a.value)) for a in rs.resource.attributes if a.key == "service.name"), "")
            for ss in rs.scope_spans:
                self.spans.extend(ReceivedSpan(service, s) for s in ss.spans)
        self.changed.set()

    def add_metrics(self, request: metrics_service_pb2.ExportMetricsServiceRequest) -> None:
        for rm in request.resource_metrics:
            service = next((str(_value(a.value)) for a in rm.resource.attributes if a.key == "service.name"), "")
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    self.metrics.setdefault(metric.name, set()).add(service)
        self.changed.set()

    async def wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {what}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)

    def trace(self, trace_id: bytes) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.span.trace_id == trace_id]


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver

    async def Export(  # noqa: N802 - the collector's method name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.aio.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.receiver.add_spans(request)
        return trace_service_pb2.ExportTraceServiceResponse()


class _MetricsService(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver

    async def Export(  # noqa: N802 - the collector's method name
        self, request: metrics_service_pb2.ExportMetricsServiceRequest, context: grpc.aio.ServicerContext
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        self.receiver.add_metrics(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


def _restart_services(extra_env: dict[str, str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")} | extra_env
    run_stack("restart-services", env=env)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(state), server)  # type: ignore[no-untyped-call]
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_MetricsService(state), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(
        None,
        _restart_services,
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "OTEL_METRIC_EXPORT_INTERVAL": "1000",
            "OTEL_TRACES_SAMPLER": "always_on",
        },
    )
    try:
        yield state
    finally:
        # Put the stack back as it was: no exporter.
        await loop.run_in_executor(None, _restart_services, {})
        await server.stop(0)


def _descends_from(spans: list[ReceivedSpan], span: ReceivedSpan, root_id: bytes) -> bool:
    by_id = {s.span.span_id: s for s in spans}
    current: ReceivedSpan | None = span
    for _ in range(100):
        if current is None:
            return False
        if current.span.span_id == root_id:
            return True
        current = by_id.get(current.span.parent_span_id)
    return False


async def test_one_trace_per_invoice_across_the_four_services(
    stack: Stack, receiver: Receiver, status_follower: object
) -> None:
    # An ERP that traces sends its traceparent: the journey continues it.
    erp_trace, erp_span = secrets.token_hex(16), secrets.token_hex(8)
    metadata = demo().metadata(("traceparent", f"00-{erp_trace}-{erp_span}-01"))
    doc, _ = unique_invoice("ubl-invoice-valid.xml")
    ok = await submit(stack.ingest, doc, "traced.xml", metadata=metadata)
    bad = await submit(stack.ingest, f"not an invoice {erp_span}".encode(), "bad.txt", metadata=demo().metadata())
    await collect_until_final(status_follower, {ok.invoice_id, bad.invoice_id})  # type: ignore[arg-type]

    trace_id = bytes.fromhex(erp_trace)

    expected_spans = {
        ("invoicing-ingest", "store receipt"),
        ("invoicing-ingest", "send invoicing.invoice.received.v1"),
        ("invoicing-validate", "process invoicing.invoice.received.v1"),
        ("invoicing-validate", "validate invoice"),
        ("invoicing-validate", "send invoicing.invoice.validated.v1"),
        ("invoicing-route", "process invoicing.invoice.validated.v1"),
        ("invoicing-route", "send invoicing.invoice.routed.v1"),
        ("invoicing-status", "process invoicing.invoice.received.v1"),
        ("invoicing-status", "process invoicing.invoice.routed.v1"),
        ("invoicing-status", "apply status"),
        ("invoicing-status", "send invoicing.invoice.status.v1"),
    }

    def journey_complete() -> bool:
        return expected_spans <= {(s.service, s.span.name) for s in receiver.trace(trace_id)}

    await receiver.wait_for(journey_complete, 60, f"spans {expected_spans}")
    spans = receiver.trace(trace_id)
    assert {s.service for s in spans} >= SERVICES
    server = [s for s in spans if s.span.kind == trace_pb2.Span.SPAN_KIND_SERVER and s.service == "invoicing-ingest"]
    assert len(server) == 1 and server[0].span.parent_span_id == bytes.fromhex(erp_span)
    assert server[0].attributes.get("rpc.system") == "grpc"
    # The caller is named, its token is not.
    assert server[0].attributes.get("enduser.id") == demo().subject()
    token = metadata[0][1].removeprefix("Bearer ")
    assert not any(token in str(value) for s in receiver.spans for value in s.attributes.values())
    root = server[0].span.span_id
    assert all(_descends_from(spans, s, root) for s in spans), "every span hangs under the SubmitInvoice span"

    consumer = next(s for s in spans if s.span.name == "process invoicing.invoice.received.v1")
    for key in ("messaging.system", "messaging.destination.name", "messaging.destination.partition.id",
                "messaging.kafka.offset", "messaging.consumer.group.name"):  # fmt: skip
        assert key in consumer.attributes, key
    validation = next(s for s in spans if s.span.name == "validate invoice")
    assert validation.attributes["invoicing.format"] == "ubl-invoice"
    assert validation.attributes["invoicing.findings.fatal"] == 0
    assert any("db.system" in s.attributes or "db.system.name" in s.attributes for s in spans), "database spans"
    applied = [s for s in spans if s.span.name == "apply status"]
    assert any(s.attributes.get("invoicing.status_code") in (201, 203) for s in applied)

    # The refused invoice's trace shows the refusing span and its reason
    # (plain text is no invoice format: inadmissible, IRR_TYPE_F).
    def rejection_seen() -> bool:
        return any(
            s.span.name == "validate invoice" and s.attributes.get("invoicing.reason_code") == "IRR_TYPE_F"
            for s in receiver.spans
        )

    await receiver.wait_for(rejection_seen, 60, "the rejecting span")
    rejecting = next(
        s for s in receiver.spans
        if s.span.name == "validate invoice" and s.attributes.get("invoicing.reason_code") == "IRR_TYPE_F"
    )  # fmt: skip
    assert rejecting.span.status.code == trace_pb2.Status.STATUS_CODE_ERROR
    assert rejecting.attributes["invoicing.invoice_id"] == bad.invoice_id

    await receiver.wait_for(lambda: set(receiver.metrics) >= METRICS, 60, f"metrics {METRICS}")
    assert receiver.metrics["invoicing.submissions"] == {"invoicing-ingest"}
    assert "invoicing-status" in receiver.metrics["invoicing.e2e.latency"]


async def test_metrics_are_scrapeable_in_prometheus_format(stack: Stack, status_follower: object) -> None:
    doc, _ = unique_invoice("ubl-invoice-valid.xml")
    reply = await submit(stack.ingest, doc, "scraped.xml")
    await collect_until_final(status_follower, {reply.invoice_id})  # type: ignore[arg-type]
    for var, expected in (
        ("INGEST_METRICS_ADDR", "invoicing_submissions"),
        ("STATUS_METRICS_ADDR", "invoicing_status_transitions"),
        # Sub-second buckets, so that an SRE's quantile of these means
        # something (OpenTelemetry's default bounds start at 5 s).
        ("STATUS_METRICS_ADDR", 'invoicing_e2e_latency_seconds_bucket{le="0.25"'),
        ("VALIDATE_METRICS_ADDR", 'invoicing_validation_duration_seconds_bucket{format="ubl-invoice",le="0.01"'),
    ):
        url = f"http://{os.environ[var]}/metrics"

        def scrape(url: str = url) -> str:
            with urllib.request.urlopen(url, timeout=10) as response:
                return str(response.read().decode())

        body = await asyncio.get_running_loop().run_in_executor(None, scrape)
        assert expected in body, f"{expected} not in {var} metrics"
