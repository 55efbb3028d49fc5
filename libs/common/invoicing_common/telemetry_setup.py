"""OpenTelemetry SDK set-up: called by service entry points only.

Configured by the standard OTEL_* variables alone (OTEL_SERVICE_NAME,
OTEL_RESOURCE_ATTRIBUTES, OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_TRACES_SAMPLER,
OTEL_METRIC_EXPORT_INTERVAL, OTEL_METRICS_EXEMPLAR_FILTER, ...). With no OTLP
endpoint nothing is exported (spans still exist, so logs and events carry
trace ids), and no exporter complains at every attempt. METRICS_PORT (not
an OTel variable: the Prometheus scrape port) serves the metrics in
Prometheus text format.
"""

from __future__ import annotations

import os

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, ExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor


def _otlp_endpoint(signal: str) -> str:
    return os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")


def _exporter_enabled(signal: str) -> bool:
    choice = os.environ.get(f"OTEL_{signal}_EXPORTER", "otlp").strip().lower()
    return choice != "none" and bool(_otlp_endpoint(signal))


# A span per SQL statement cost about 0.8 ms of ingest's CPU per invoice at
# half load (issue 18): each batch's own span ("store receipts", "apply
# status batch", ...) already carries the database's share of a journey.
_DISABLED_BY_DEFAULT = "asyncpg"


def _disabled_instrumentations() -> set[str]:
    """OTEL_PYTHON_DISABLED_INSTRUMENTATIONS, as the auto-instrumentation reads
    it; unset, the asyncpg instrumentation is left out (set it to the empty
    string to have a span per SQL statement)."""
    names = os.environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", _DISABLED_BY_DEFAULT)
    return {name.strip() for name in names.split(",")}


def exemplar_filter(readers_may_keep_exemplars: bool) -> ExemplarFilter | None:
    """The exemplar filter to give the MeterProvider, or None for the SDK's
    own choice (OTEL_METRICS_EXEMPLAR_FILTER, ``trace_based`` by default).

    The SDK offers every measurement taken inside a sampled span to an
    exemplar reservoir. The Prometheus text endpoint has no exemplars, so
    with nothing else reading the metrics that work is thrown away: about a
    quarter of each measurement's cost (issue 18, docs/performance.md)."""
    if readers_may_keep_exemplars or os.environ.get("OTEL_METRICS_EXEMPLAR_FILTER", "").strip():
        return None
    return AlwaysOffExemplarFilter()


# Logging is set up after telemetry (by lifecycle.run), which logs this then.
_summary = ""


def summary() -> str:
    """What configure() set up, in one line (empty before it ran)."""
    return _summary


def configure(
    default_service_name: str,
    metrics_port: int = 0,
    extra_span_processors: tuple[SpanProcessor, ...] = (),
    extra_metric_readers: tuple[MetricReader, ...] = (),
) -> tuple[TracerProvider, MeterProvider]:
    # OTEL_SERVICE_NAME wins when set; the default names the service otherwise.
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: default_service_name}
    resource = Resource.create(attributes)

    tracer_provider = TracerProvider(resource=resource)
    if _exporter_enabled("TRACES"):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    for processor in extra_span_processors:
        tracer_provider.add_span_processor(processor)
    trace.set_tracer_provider(tracer_provider)

    readers: list[MetricReader] = list(extra_metric_readers)
    if _exporter_enabled("METRICS"):
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    if metrics_port:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import start_http_server

        start_http_server(port=metrics_port, addr=os.environ.get("METRICS_HOST", "127.0.0.1"))
        readers.append(PrometheusMetricReader())
    # An OTLP exporter sends exemplars on; a caller's own reader may read them.
    exemplars = exemplar_filter(_exporter_enabled("METRICS") or bool(extra_metric_readers))
    meter_provider = MeterProvider(resource=resource, metric_readers=readers, exemplar_filter=exemplars)
    metrics.set_meter_provider(meter_provider)

    if "asyncpg" not in _disabled_instrumentations():
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

        AsyncPGInstrumentor().instrument(tracer_provider=tracer_provider)  # type: ignore[no-untyped-call]
    sinks = ["OTLP"] if _exporter_enabled("METRICS") else []
    sinks += [f"Prometheus on port {metrics_port}"] if metrics_port else []
    global _summary
    _summary = "telemetry: traces {}; metrics {}".format(
        "exported over OTLP" if _exporter_enabled("TRACES") else "not exported",
        ", ".join(sinks) or "not exported",
    )
    return tracer_provider, meter_provider


def shutdown(tracer_provider: TracerProvider, meter_provider: MeterProvider) -> None:
    """Flush what is buffered (called after the services stopped)."""
    tracer_provider.shutdown()
    meter_provider.shutdown()
