"""Exemplars are sampled only where something can read them: an OTLP
metrics exporter, a caller's own reader, or an operator who asks."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter

from invoicing_common.telemetry_setup import exemplar_filter


def test_prometheus_alone_gets_no_exemplars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_METRICS_EXEMPLAR_FILTER", raising=False)
    assert isinstance(exemplar_filter(readers_may_keep_exemplars=False), AlwaysOffExemplarFilter)


def test_a_reader_that_may_keep_them_leaves_the_sdk_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_METRICS_EXEMPLAR_FILTER", raising=False)
    assert exemplar_filter(readers_may_keep_exemplars=True) is None


@pytest.mark.parametrize("choice", ["always_on", "trace_based"])
def test_an_operators_choice_wins(monkeypatch: pytest.MonkeyPatch, choice: str) -> None:
    monkeypatch.setenv("OTEL_METRICS_EXEMPLAR_FILTER", choice)
    # None: the SDK reads the variable itself.
    assert exemplar_filter(readers_may_keep_exemplars=False) is None


# configure() installs process-wide providers: run it in a child process.
_RECORD_IN_A_SPAN = """
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from invoicing_common import telemetry_setup
reader = InMemoryMetricReader()
providers = telemetry_setup.configure("invoicing-test", extra_metric_readers=(reader,))
histogram = metrics.get_meter("test").create_histogram("test.duration", unit="s")
with trace.get_tracer("test").start_as_current_span("work"):
    histogram.record(0.25, {"format": "cii"})
data = reader.get_metrics_data()
points = [p for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
          if m.name == "test.duration" for p in m.data.data_points]
print(sum(len(p.exemplars) for p in points))
telemetry_setup.shutdown(*providers)
"""


def _exemplars_recorded(env: dict[str, str]) -> int:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", _RECORD_IN_A_SPAN],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return int(done.stdout.strip())


def test_a_callers_reader_still_gets_the_measurements_exemplar() -> None:
    assert _exemplars_recorded({}) == 1


def test_an_operator_can_turn_them_off_for_every_reader() -> None:
    assert _exemplars_recorded({"OTEL_METRICS_EXEMPLAR_FILTER": "always_off"}) == 0
