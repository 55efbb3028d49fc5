"""Pure figures of `invoicectl bench`: percentiles, rates, the JSON report."""

from __future__ import annotations

import json
import math

import pytest

from invoicectl.bench.generator import BenchDocument, Kind, Seller
from invoicectl.bench.report import Baselines, BenchReport, Latency, ValidationBaseline, percentile, steady_rate
from invoicectl.bench.runner import Mode, Sent, figures


def test_percentile_interpolates_between_closest_ranks() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 95) == pytest.approx(3.85)


def test_percentile_ignores_input_order_and_handles_edges() -> None:
    assert percentile([5.0, 1.0, 3.0], 50) == 3.0
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError, match="between 0 and 100"):
        percentile([1.0], 101)


def test_percentile_of_1_to_100() -> None:
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)


def test_latency_is_reported_in_milliseconds() -> None:
    latency = Latency.of_seconds([0.010, 0.020, 0.030])
    assert (latency.p50, latency.max, latency.mean, latency.count) == (20.0, 30.0, 20.0, 3)


def test_steady_rate_drops_ramp_and_drain() -> None:
    # 100 completions: 10 slow ones at each end, 80 at 10/s in between.
    times = [float(i) for i in range(10)] + [10 + i / 10 for i in range(80)] + [100.0 + i for i in range(10)]
    assert steady_rate(times) == pytest.approx(10.0, rel=0.05)
    assert steady_rate([1.0, 2.0]) == 0.0


def _document(index: int, valid: bool = True) -> BenchDocument:
    return BenchDocument(index, Kind.UBL, f"{index}.xml", f"N{index}", Seller("S", "842109373"), valid, b"x", b"x")


def test_figures_count_lost_refused_and_unexpected_outcomes() -> None:
    sent = [
        Sent(_document(0), start=0.0, acked=0.1, invoice_id="a"),
        Sent(_document(1), start=0.0, acked=0.2, invoice_id="b"),
        Sent(_document(2, valid=False), start=0.5, acked=0.6, invoice_id="c"),
        Sent(_document(3), start=0.5, error="UNAVAILABLE"),
    ]
    finals = {"a": (203, 1.0), "c": (203, 2.5), "other": (213, 1.5)}
    f = figures(sent, finals, {"b"}, t0=0.0, submitted_at=1.0, mode=Mode.CLOSED, concurrency=2, per_second=0)
    assert (f.count, f.acked, f.lost, f.lost_invoice_ids) == (4, 3, 1, ["b"])
    assert f.failed_submissions == {"UNAVAILABLE": 1}
    assert f.finals == {"203": 2}
    assert f.invalid_accepted == 1 and f.valid_rejected == 0
    assert f.submissions_per_s == 3.0
    assert f.e2e_latency_ms.max == 2000.0
    assert f.e2e_invoices_per_s == pytest.approx(0.8)
    assert f.target_rate is None


def test_report_json_holds_the_required_figures() -> None:
    sent = [Sent(_document(i), start=0.0, acked=0.01, invoice_id=str(i)) for i in range(20)]
    finals = {str(i): (203, 1.0 + i / 10) for i in range(20)}
    pipeline = figures(sent, finals, set(), 0.0, 0.5, Mode.OPEN, 1, 40.0)
    ceiling = ValidationBaseline(documents=20, workers=2, docs_per_s=10.0, docs_per_s_per_worker=5.0, stylesheets={})
    report = BenchReport("run", pipeline, Baselines(validation=ceiling), {"ubl": 20})
    data = json.loads(json.dumps(report.as_json(), allow_nan=False))
    for key in ("e2e_invoices_per_s", "ack_latency_ms", "e2e_latency_ms", "lost", "baselines"):
        assert key in data
    for key in ("ack_latency_ms", "e2e_latency_ms"):
        assert set(data[key]) >= {"p50", "p95", "p99"}
    assert data["lost"] == 0
    assert data["baselines"]["validation"]["docs_per_s"] == 10.0
    assert data["ratios"]["e2e_over_validation_ceiling"] == pytest.approx(pipeline.e2e_invoices_per_s / 10.0, abs=1e-3)
    assert data["target_rate"] == 40.0


def test_the_validation_ceiling_is_the_mean_of_its_measurements() -> None:
    before = ValidationBaseline(documents=20, workers=2, docs_per_s=100.0, docs_per_s_per_worker=50.0, stylesheets={})
    after = ValidationBaseline(documents=20, workers=2, docs_per_s=120.0, docs_per_s_per_worker=60.0, stylesheets={})
    ceiling = ValidationBaseline.combined([before, after])
    assert (ceiling.docs_per_s, ceiling.docs_per_s_per_worker, ceiling.measurements) == (110.0, 55.0, [100.0, 120.0])
    sent = [Sent(_document(i), start=0.0, acked=0.01, invoice_id=str(i)) for i in range(20)]
    pipeline = figures(sent, {str(i): (203, 1.0 + i / 10) for i in range(20)}, set(), 0.0, 0.5, Mode.CLOSED, 1, 0)
    data = BenchReport("run", pipeline, Baselines(validation=ceiling), {"ubl": 20}).as_json()
    assert data["baselines"]["validation"]["measurements"] == [100.0, 120.0]
    assert data["ratios"]["e2e_over_validation_ceiling"] == pytest.approx(pipeline.e2e_invoices_per_s / 110.0, abs=1e-3)
    with pytest.raises(ValueError):
        ValidationBaseline.combined([])
