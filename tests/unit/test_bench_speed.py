"""The bench's machine speed probe, and the stack's CPU expressed in probe calls."""

from __future__ import annotations

import io
import json
from dataclasses import asdict

import pytest
from rich.console import Console

from invoicectl.bench.cpu import TOTAL, CpuUse
from invoicectl.bench.generator import BenchDocument, Kind, Seller
from invoicectl.bench.report import Baselines, BenchReport, render_cpu
from invoicectl.bench.runner import Mode, Sent, figures
from invoicectl.bench.speed import SpeedProbe, control_task, probe


def _report(cpu: CpuUse | None, speed: SpeedProbe | None) -> BenchReport:
    document = BenchDocument(0, Kind.UBL, "0.xml", "N0", Seller("S", "842109373"), True, b"x", b"x")
    pipeline = figures([Sent(document, start=0.0, acked=0.01, invoice_id="a")], {"a": (203, 0.5)}, set(), 0.0, 0.1,
                       Mode.OPEN, 1, 10.0)  # fmt: skip
    return BenchReport("run", pipeline, Baselines(), {"ubl": 1}, cpu=cpu, speed=speed)


def test_the_control_task_is_deterministic_work() -> None:
    task = control_task()
    assert task() == task() == sum(i + len(str(i) * 4) for i in range(1200))


def test_probe_gives_the_cpu_time_of_one_call_in_milliseconds() -> None:
    # A fast hour gives about 0.3 ms, a slow one about 0.65: anything in a
    # wide band around those is a plausible reading, a second or a
    # microsecond is a unit error.
    assert 0.01 < probe(calls=20, rounds=4) < 100


def test_probe_refuses_fewer_calls_than_rounds() -> None:
    with pytest.raises(ValueError, match="rounds"):
        probe(calls=2, rounds=5)


def test_cpu_in_probe_calls_uses_the_mean_of_before_and_after() -> None:
    speed = SpeedProbe(before=0.3, after=0.5)
    assert speed.mean == pytest.approx(0.4)
    assert speed.in_calls(20.0) == 50.0


def test_report_json_carries_the_probe_and_the_stack_cpu_in_calls() -> None:
    cpu = CpuUse(ms_per_invoice={"validate": 12.0, TOTAL: 20.0}, window_seconds=5.0)
    data = json.loads(json.dumps(_report(cpu, SpeedProbe(0.3, 0.5)).as_json(), allow_nan=False))
    assert data["machine"]["speed_probe_ms"] == {"before": 0.3, "after": 0.5}
    assert data["cpu_per_invoice_in_probe_calls"] == 50.0


@pytest.mark.parametrize(
    ("cpu", "speed"),
    [
        (CpuUse(ms_per_invoice={"validate": 12.0, TOTAL: 20.0}), None),
        (CpuUse(unavailable="no stack pid file in .run/pids"), SpeedProbe(0.3, 0.5)),
        (None, SpeedProbe(0.3, 0.5)),
    ],
)
def test_without_a_probe_or_a_cpu_reading_the_figure_is_null(cpu: CpuUse | None, speed: SpeedProbe | None) -> None:
    data = _report(cpu, speed).as_json()
    assert data["cpu_per_invoice_in_probe_calls"] is None
    assert data["machine"]["speed_probe_ms"] == (asdict(speed) if speed else None)


def test_the_cpu_table_is_followed_by_the_probe() -> None:
    out = io.StringIO()
    cpu = CpuUse(ms_per_invoice={"validate": 12.0, TOTAL: 20.0}, window_seconds=5.0)
    render_cpu(_report(cpu, SpeedProbe(0.3, 0.5)), Console(file=out, width=200))
    assert "machine speed probe 0.300 / 0.500 ms per call (before / after)" in out.getvalue()
    assert "50.0 probe calls" in out.getvalue()
