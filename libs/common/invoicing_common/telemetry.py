"""Tracing and metrics helpers on the OpenTelemetry *API* only.

Library code never configures the SDK: without ``telemetry_setup.configure``
(called by each service's entry point) every span and instrument here is a
no-op. Span attributes follow the semantic conventions: ``messaging.*`` for
Kafka, ``rpc.*`` for gRPC (via the gRPC instrumentation), ``db.*`` for
PostgreSQL (via the asyncpg instrumentation, and ingest's ``store receipt``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import Span, SpanKind
from opentelemetry.util.types import AttributeValue

_tracer = trace.get_tracer("invoicing")
_meter = metrics.get_meter("invoicing")

# Histogram bucket bounds. Without them a histogram gets OpenTelemetry's
# default bounds (0, 5, 10, 25 ... 10 000), made for milliseconds: a
# seconds histogram would put every value under 5 s in one bucket, and a
# quantile read from it (histogram_quantile) would say nothing. The bounds
# include the thresholds we read: 0.1 and 0.25 s (issue 18's latency goals),
# 30 s (the end-to-end alert, deploy/observability/prometheus-alerts.yaml).
LATENCY_BUCKETS_S: Final = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.35, 0.5, 0.75,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip
# One document's validation: a few ms, up to the time limit (validate's settings).
VALIDATION_BUCKETS_S: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
RPC_BUCKETS_MS: Final = (1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0)
# Counts of things (submissions in one transaction, attempts): 1 is the usual case.
COUNT_BUCKETS: Final = (1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0)

# The metrics every SRE dashboard is built on (docs/operations.md).
SUBMISSIONS = _meter.create_counter(
    "invoicing.submissions", unit="{invoice}", description="Submissions to ingest, by outcome"
)
VALIDATION_DURATION = _meter.create_histogram(
    "invoicing.validation.duration",
    unit="s",
    description="Time to validate one document",
    explicit_bucket_boundaries_advisory=VALIDATION_BUCKETS_S,
)
FINDINGS = _meter.create_counter(
    "invoicing.validation.findings", unit="{finding}", description="Validation findings, by rule and severity"
)
RULES_SHADOW_DISAGREEMENTS = _meter.create_counter(
    "invoicing.validation.rules_shadow.disagreements",
    unit="{invoice}",
    description="Invoices on which the French rules release in shadow disagrees with the one applied,"
    " by release pair and kind (verdict, rules)",
)
ROUTING_OUTCOMES = _meter.create_counter(
    "invoicing.routing.outcomes", unit="{invoice}", description="Routing decisions, by outcome and reason"
)
STATUS_TRANSITIONS = _meter.create_counter(
    "invoicing.status.transitions", unit="{transition}", description="Lifecycle transitions, by status code"
)
E2E_LATENCY = _meter.create_histogram(
    "invoicing.e2e.latency",
    unit="s",
    description="From submission to the first final pipeline status (201, 203, 213 or 501)",
    explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_S,
)
RPC_DURATION = _meter.create_histogram(
    "rpc.server.duration",
    unit="ms",
    description="gRPC server call duration, by method and status",
    explicit_bucket_boundaries_advisory=RPC_BUCKETS_MS,
)
RECEIPT_BATCH_SIZE = _meter.create_histogram(
    "invoicing.ingest.receipt_batch.size",
    unit="{submission}",
    description="Submissions sharing one receipt transaction (ingest's group commit)",
    explicit_bucket_boundaries_advisory=COUNT_BUCKETS,
)
DLQ_RECORDS = _meter.create_counter(
    "invoicing.dlq.records", unit="{record}", description="Records sent to the dead-letter topic, by source"
)
HOLDS = _meter.create_counter(
    "invoicing.status.holds", unit="{invoice}", description="Invoices held by a dead letter of one of their events"
)


def tracer() -> trace.Tracer:
    return _tracer


def meter() -> metrics.Meter:
    return _meter


def current_trace_id() -> str:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


def inject_headers() -> list[tuple[str, bytes]]:
    """W3C trace context of the current span, as Kafka record headers."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return [(k, v.encode()) for k, v in carrier.items()]


@contextmanager
def produce_span(topic: str, key: str, message_id: str = "") -> Iterator[list[tuple[str, bytes]]]:
    """A PRODUCER span for one record; yields the headers to send with it,
    which carry this span as the consumer's parent."""
    attributes: dict[str, AttributeValue] = {
        "messaging.system": "kafka",
        "messaging.operation.type": "send",
        "messaging.destination.name": topic,
        "messaging.kafka.message.key": key,
    }
    if message_id:
        attributes["messaging.message.id"] = message_id
    with _tracer.start_as_current_span(f"send {topic}", kind=SpanKind.PRODUCER, attributes=attributes):
        yield inject_headers()


def consume_span_attributes(
    topic: str, partition: int, offset: int, group: str, key: bytes | None
) -> dict[str, AttributeValue]:
    return {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.destination.name": topic,
        "messaging.destination.partition.id": str(partition),
        "messaging.kafka.offset": offset,
        "messaging.consumer.group.name": group,
        "messaging.kafka.message.key": (key or b"").decode(errors="replace"),
    }


def record_invoice(span: Span, invoice_id: str) -> None:
    span.set_attribute("invoicing.invoice_id", invoice_id)
