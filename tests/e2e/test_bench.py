"""`invoicectl bench` against the running stack: a small closed-loop run
with every ceiling writes a report holding the figures issue 7 asks for, and
loses nothing. (Speeds are not asserted: docs/performance.md has those.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.stack

COUNT = 40


def test_a_small_bench_run_reports_every_figure_and_loses_nothing(tmp_path: Path) -> None:
    report_file = tmp_path / "r.json"
    invoicectl = Path(sys.executable).parent / "invoicectl"
    done = subprocess.run(
        [str(invoicectl), "bench", "--count", str(COUNT), "--baseline-count", str(COUNT),
         "--concurrency", "8", "--json", str(report_file)],
        cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(report_file.read_text())

    assert report["count"] == report["acked"] == COUNT
    assert report["lost"] == 0 and report["lost_invoice_ids"] == []
    assert report["valid_rejected"] == 0 and report["invalid_accepted"] == 0
    assert sum(report["finals"].values()) == COUNT
    assert report["e2e_invoices_per_s"] > 0
    for key in ("ack_latency_ms", "e2e_latency_ms"):
        assert {"p50", "p95", "p99"} <= set(report[key])
        assert 0 < report[key]["p50"] <= report[key]["p95"] <= report[key]["p99"]
    baselines = report["baselines"]
    assert baselines["ingest_grpc"]["submissions_per_s"] > 0
    assert baselines["kafka"]["produce_consume_per_s"] > 0
    validation = baselines["validation"]
    assert len(validation["measurements"]) == 2  # before and after the pipeline phase
    assert validation["docs_per_s"] == pytest.approx(sum(validation["measurements"]) / 2, abs=0.01)
    assert report["ratios"]["e2e_over_validation_ceiling"] > 0
    # CPU per invoice of each stack component over the measured phase.
    assert report["cpu_unavailable"] is None
    cpu = report["cpu_ms_per_invoice"]
    stack = ("ingest", "validate", "route", "status", "kafka", "postgres")
    assert all(cpu[name] > 0 for name in stack), cpu
    components = {k: v for k, v in cpu.items() if k not in ("total", "load generator (this bench)", "other processes")}
    assert set(stack) <= components.keys()
    assert cpu["total"] == pytest.approx(sum(components.values()), abs=0.05)
    assert cpu["load generator (this bench)"] > 0
    assert report["cpu_window_seconds"] > 0 and 0 < report["cpu_busy_share"] <= 1
    # Every invoice's hops up to validation, 200 -> validated split at the
    # received record (ingest's outbox, then validate's stage).
    assert report["hops_unavailable"] == []
    for hop in ("submit_to_200", "200_to_validated", "200_to_received", "received_to_validated", "total"):
        assert report["hops_ms"][hop]["count"] == COUNT, hop
    # The machine's speed of the hour, before and after, and the stack's CPU in it.
    speed = report["machine"]["speed_probe_ms"]
    assert speed["before"] > 0 and speed["after"] > 0
    mean = (speed["before"] + speed["after"]) / 2
    assert report["cpu_per_invoice_in_probe_calls"] == pytest.approx(cpu["total"] / mean, abs=0.01)
    assert "machine speed probe" in done.stdout
