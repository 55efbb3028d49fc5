"""Bench figures: percentiles, rates, the JSON report and its console table."""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from invoicectl.bench.cpu import LOAD_GENERATOR, OTHER, TOTAL, CpuUse
from invoicectl.bench.speed import SpeedProbe


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between the
    closest ranks (numpy's default); NaN for no values."""
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be between 0 and 100, not {q}")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Latency:
    """Milliseconds."""

    p50: float
    p95: float
    p99: float
    max: float
    mean: float
    count: int

    @classmethod
    def of_seconds(cls, samples: Sequence[float]) -> Latency:
        ms = [s * 1000.0 for s in samples]
        return cls(
            p50=_round(percentile(ms, 50)),
            p95=_round(percentile(ms, 95)),
            p99=_round(percentile(ms, 99)),
            max=_round(max(ms)) if ms else math.nan,
            mean=_round(sum(ms) / len(ms)) if ms else math.nan,
            count=len(ms),
        )


def rate(count: int, seconds: float) -> float:
    """Events per second; 0 when nothing was measured."""
    return _round(count / seconds) if seconds > 0 and count > 0 else 0.0


def steady_rate(times: Sequence[float], low: float = 10.0, high: float = 90.0) -> float:
    """Rate between the ``low`` and ``high`` percentiles of completion times:
    the plateau, without ramp-up and drain."""
    if len(times) < 10:
        return 0.0
    ordered = sorted(times)
    i, j = int(len(ordered) * low / 100), int(len(ordered) * high / 100) - 1
    return rate(j - i, ordered[j] - ordered[i])


# 200_to_received and received_to_validated split 200_to_validated: ingest's
# outbox, then validate's stage.
HOPS: tuple[str, ...] = (
    "submit_to_200",
    "200_to_validated",
    "200_to_received",
    "received_to_validated",
    "validated_to_routed",
    "routed_to_final",
    "total",
)
HOP_LABELS: dict[str, str] = {
    "submit_to_200": "submit -> 200",
    "200_to_validated": "200 -> validated",
    "200_to_received": "  of which 200 -> received",
    "received_to_validated": "  and received -> validated",
    "validated_to_routed": "validated -> routed",
    "routed_to_final": "routed -> final",
    "total": "submit -> final",
}


def ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 3) if denominator > 0 else None


def _round(value: float) -> float:
    return value if math.isnan(value) else round(value, 2)


@dataclass
class PipelineFigures:
    mode: str
    concurrency: int
    target_rate: float | None
    count: int
    acked: int
    failed_submissions: dict[str, int]
    submit_seconds: float
    submissions_per_s: float
    ack_latency_ms: Latency
    e2e_latency_ms: Latency
    e2e_seconds: float
    e2e_invoices_per_s: float
    e2e_invoices_per_s_steady: float
    lost: int
    finals: dict[str, int]
    valid_rejected: int
    invalid_accepted: int
    lost_invoice_ids: list[str] = field(default_factory=list)
    # Submissions sent again after a transient refusal (--retry-for).
    retried_submissions: int = 0
    # Per-hop latencies (HOPS); None for a hop no invoice has.
    hops_ms: dict[str, Latency | None] = field(default_factory=dict)
    # Topics the per-hop read could not use, with why (their hops are absent).
    hops_unavailable: list[str] = field(default_factory=list)


@dataclass
class Calibration:
    """``--rate auto``: a closed-loop run measures the capacity, and the open
    loop that follows runs at ``fraction`` of it."""

    fraction: float
    capacity_invoices_per_s: float
    # Which figure of the closed-loop run the capacity is.
    capacity_from: str
    target_rate: float
    run: PipelineFigures
    # CPU of the closed-loop run (set once it is over).
    cpu: CpuUse | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "fraction": self.fraction,
            "capacity_invoices_per_s": self.capacity_invoices_per_s,
            "capacity_from": self.capacity_from,
            "target_rate": self.target_rate,
            "run": asdict(self.run),
            **cpu_json(self.cpu),
        }

    def achieved(self, open_loop: PipelineFigures) -> dict[str, float | None]:
        """How the open loop kept to its rate, and what it carried against
        the measured capacity."""
        return {
            "submissions_over_target_rate": ratio(open_loop.submissions_per_s, self.target_rate),
            "e2e_steady_over_capacity": ratio(open_loop.e2e_invoices_per_s_steady, self.capacity_invoices_per_s),
        }


@dataclass
class GrpcBaseline:
    """A bare grpc.aio server answering SubmitInvoice at once: the ingest ceiling."""

    requests: int
    concurrency: int
    submissions_per_s: float
    ack_latency_ms: Latency


@dataclass
class KafkaBaseline:
    """aiokafka produce -> consume of the same payloads, acks=all: the Kafka ceiling."""

    records: int
    payload_bytes_mean: float
    partitions: int
    produce_per_s: float
    produce_consume_per_s: float


@dataclass
class ValidationBaseline:
    """saxonche + the official XSLT, one process per core: the validation ceiling."""

    documents: int
    workers: int
    docs_per_s: float
    docs_per_s_per_worker: float
    stylesheets: dict[str, list[str]]
    # docs/s of each measurement when several were combined (in order).
    measurements: list[float] = field(default_factory=list)

    @classmethod
    def combined(cls, runs: Sequence[ValidationBaseline]) -> ValidationBaseline:
        """One ceiling from several measurements of it: their mean. Measured
        before and after the pipeline phase, the ceiling drifts with the
        machine less than either measurement alone."""
        if not runs:
            raise ValueError("no measurement to combine")
        mean = sum(r.docs_per_s for r in runs) / len(runs)
        return cls(
            documents=runs[0].documents,
            workers=runs[0].workers,
            docs_per_s=round(mean, 2),
            docs_per_s_per_worker=round(mean / runs[0].workers, 2),
            stylesheets=runs[0].stylesheets,
            measurements=[r.docs_per_s for r in runs],
        )


@dataclass
class Baselines:
    ingest_grpc: GrpcBaseline | None = None
    kafka: KafkaBaseline | None = None
    validation: ValidationBaseline | None = None


@dataclass
class BenchReport:
    run_id: str
    pipeline: PipelineFigures
    baselines: Baselines
    mix: dict[str, int]
    machine: dict[str, Any] = field(default_factory=lambda: machine())
    calibration: Calibration | None = None
    # CPU of the measured phase.
    cpu: CpuUse | None = None
    # The machine's speed before and after the measured phase.
    speed: SpeedProbe | None = None

    def stack_cpu_in_probe_calls(self) -> float | None:
        """The stack's CPU per invoice in speed-probe calls, or None."""
        per_invoice = self.cpu.ms_per_invoice if self.cpu else None
        if self.speed is None or not per_invoice or TOTAL not in per_invoice:
            return None
        return self.speed.in_calls(per_invoice[TOTAL])

    def ratios(self) -> dict[str, float | None]:
        b = self.baselines
        return {
            "e2e_over_validation_ceiling": ratio(self.pipeline.e2e_invoices_per_s, b.validation.docs_per_s)
            if b.validation
            else None,
            "e2e_steady_over_validation_ceiling": ratio(
                self.pipeline.e2e_invoices_per_s_steady, b.validation.docs_per_s
            )
            if b.validation
            else None,
            "submissions_over_ingest_ceiling": ratio(self.pipeline.submissions_per_s, b.ingest_grpc.submissions_per_s)
            if b.ingest_grpc
            else None,
            "submissions_over_kafka_ceiling": ratio(self.pipeline.submissions_per_s, b.kafka.produce_consume_per_s)
            if b.kafka
            else None,
        }

    def as_json(self) -> dict[str, Any]:
        p = asdict(self.pipeline)
        return {
            "run_id": self.run_id,
            "machine": {**self.machine, "speed_probe_ms": asdict(self.speed) if self.speed else None},
            "mix": self.mix,
            **p,
            **cpu_json(self.cpu),
            "cpu_per_invoice_in_probe_calls": self.stack_cpu_in_probe_calls(),
            "baselines": asdict(self.baselines),
            "ratios": self.ratios(),
            "calibration": {**self.calibration.as_json(), **self.calibration.achieved(self.pipeline)}
            if self.calibration
            else None,
        }


def cpu_json(use: CpuUse | None) -> dict[str, Any]:
    """The CPU keys of a phase, present (null) even when it was not measured."""
    return (use or CpuUse(unavailable="not measured")).as_json()


def machine() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_end": [round(x, 2) for x in load],
    }


def _lat(latency: Latency) -> str:
    return f"p50 {latency.p50:.1f}  p95 {latency.p95:.1f}  p99 {latency.p99:.1f}  (max {latency.max:.1f})"


def _calibration_rows(c: Calibration, open_loop: PipelineFigures) -> list[tuple[str, str]]:
    run = c.run
    rows = [
        (
            "calibration (closed loop)",
            f"{run.count} invoices, concurrency {run.concurrency}, lost {run.lost}, "
            f"ack p50 {run.ack_latency_ms.p50:.1f} ms",
        ),
        (
            "capacity invoices/s",
            f"{c.capacity_invoices_per_s:.1f} ({c.capacity_from}; overall {run.e2e_invoices_per_s:.1f})",
        ),
        ("open-loop rate /s", f"{c.target_rate:.1f} ({c.fraction:g} x capacity)"),
    ]
    for name, value in c.achieved(open_loop).items():
        if value is not None:
            rows.append((name.replace("_", " "), f"{value:.3f}"))
    return rows


def hop_rows(hops: Mapping[str, Latency | None]) -> list[tuple[str, str, str, str, str, str]]:
    """(hop, p50, p95, p99, max, invoices) per hop, in pipeline order; a
    hop without samples shows dashes."""
    rows = []
    for hop in HOPS:
        latency = hops.get(hop)
        label = HOP_LABELS[hop]
        if latency is None:
            rows.append((label, "-", "-", "-", "-", "0"))
        else:
            rows.append(
                (
                    label,
                    f"{latency.p50:.1f}",
                    f"{latency.p95:.1f}",
                    f"{latency.p99:.1f}",
                    f"{latency.max:.1f}",
                    str(latency.count),
                )
            )
    return rows


def render_hops(p: PipelineFigures, console: Console) -> None:
    """The per-hop percentile table (pipeline timestamps, ms)."""
    if not p.hops_ms and not p.hops_unavailable:
        return
    table = Table(title="per hop, ms (pipeline timestamps)", show_header=True, header_style="bold")
    table.add_column("hop")
    for name in ("p50", "p95", "p99", "max", "invoices"):
        table.add_column(name, justify="right")
    for row in hop_rows(p.hops_ms):
        table.add_row(*row)
    console.print(table)
    for note in p.hops_unavailable:
        console.print(f"[yellow]not read:[/yellow] {note}")


TOTAL_LABEL = f"{TOTAL} (stack)"


def _cpu_window(use: CpuUse) -> str:
    busy = f", machine busy {use.busy_share:.0%}" if use.busy_share is not None else ""
    return f"{use.window_seconds or 0.0:.1f} s{busy}"


def cpu_rows(measured: Mapping[str, float], calibration: Mapping[str, float] | None = None) -> list[list[str]]:
    """(component, ms per invoice[, in the calibration]): the stack's
    components most costly first, their total, then what is not the stack
    (the bench itself, the machine's other processes)."""
    extras = [name for name in (LOAD_GENERATOR, OTHER) if name in measured]
    stack = sorted((name for name in measured if name != TOTAL and name not in extras), key=lambda n: -measured[n])
    rows = []
    for name in [*stack, TOTAL, *extras]:
        row = [TOTAL_LABEL if name == TOTAL else name, f"{measured.get(name, 0.0):.2f}"]
        if calibration is not None:
            row.append(f"{calibration[name]:.2f}" if name in calibration else "-")
        rows.append(row)
    return rows


def render_cpu(report: BenchReport, console: Console) -> None:
    """CPU milliseconds per invoice of each stack component over the
    measured phase, with the calibration's closed loop beside it."""
    measured = report.cpu
    if measured is None:
        return
    if measured.ms_per_invoice is None:
        console.print(f"[yellow]CPU per invoice not measured:[/yellow] {measured.unavailable}")
        return
    closed = report.calibration.cpu if report.calibration else None
    calibration = closed.ms_per_invoice if closed else None
    table = Table(title="CPU per invoice (ms), measured phase", show_header=True, header_style="bold")
    table.add_column("component")
    table.add_column("ms/invoice", justify="right")
    if calibration is not None:
        table.add_column("calibration", justify="right")
    rows = cpu_rows(measured.ms_per_invoice, calibration)
    total = next(index for index, row in enumerate(rows) if row[0] == TOTAL_LABEL)
    for index, row in enumerate(rows):
        # Lines around the total: the rows above add up to it, those below are not the stack.
        table.add_row(*row, end_section=index in (total - 1, total), style="bold" if index == total else None)
    console.print(table)
    windows = [("measured phase", measured)] + ([("calibration", closed)] if closed and closed.ms_per_invoice else [])
    console.print("; ".join(f"{name} over {_cpu_window(use)}" for name, use in windows))
    in_calls = report.stack_cpu_in_probe_calls()
    if report.speed is not None and in_calls is not None:
        console.print(
            f"machine speed probe {report.speed.before:.3f} / {report.speed.after:.3f} ms per call"
            f" (before / after): the stack's CPU per invoice is {in_calls:.1f} probe calls"
        )
    if closed is not None and closed.ms_per_invoice is None:
        console.print(f"[yellow]calibration CPU not measured:[/yellow] {closed.unavailable}")


def render(report: BenchReport, console: Console) -> None:
    p = report.pipeline
    table = Table(title=f"invoicectl bench {report.run_id}", show_header=True, header_style="bold")
    table.add_column("figure")
    table.add_column("value", justify="right")
    mode = f"{p.mode}, " + (f"{p.target_rate:g}/s" if p.target_rate else f"concurrency {p.concurrency}")
    table.add_row("mode", mode)
    if report.calibration:
        for figure, shown in _calibration_rows(report.calibration, p):
            table.add_row(figure, shown)
    table.add_row("documents", f"{p.count} ({', '.join(f'{k} {v}' for k, v in report.mix.items())})")
    table.add_row("submissions/s", f"{p.submissions_per_s:.1f}")
    table.add_row("ack latency ms", _lat(p.ack_latency_ms))
    table.add_row("end-to-end latency ms", _lat(p.e2e_latency_ms))
    table.add_row("end-to-end invoices/s", f"{p.e2e_invoices_per_s:.1f} (steady {p.e2e_invoices_per_s_steady:.1f})")
    table.add_row("final statuses", ", ".join(f"{k}: {v}" for k, v in sorted(p.finals.items())) or "-")
    table.add_row("lost", f"[{'green' if p.lost == 0 else 'red'}]{p.lost}[/]")
    if p.retried_submissions:
        table.add_row("submissions sent again", str(p.retried_submissions))
    if p.failed_submissions:
        table.add_row("refused submissions", ", ".join(f"{k}: {v}" for k, v in p.failed_submissions.items()))
    if p.valid_rejected or p.invalid_accepted:
        unexpected = f"valid rejected {p.valid_rejected}, invalid accepted {p.invalid_accepted}"
        table.add_row("unexpected outcomes", unexpected)
    b = report.baselines
    if b.ingest_grpc:
        grpc_line = f"{b.ingest_grpc.submissions_per_s:.1f}  ({_lat(b.ingest_grpc.ack_latency_ms)})"
        table.add_row("ceiling: bare gRPC /s", grpc_line)
    if b.kafka:
        kafka_line = f"produce {b.kafka.produce_per_s:.1f}, produce->consume {b.kafka.produce_consume_per_s:.1f}"
        table.add_row("ceiling: Kafka /s", kafka_line)
    if b.validation:
        measured = ", ".join(f"{m:.1f}" for m in b.validation.measurements)
        table.add_row(
            "ceiling: validation docs/s",
            f"{b.validation.docs_per_s:.1f} ({b.validation.workers} processes, "
            f"{b.validation.docs_per_s_per_worker:.1f} each"
            + (f"; mean of {measured}, before and after the pipeline)" if len(b.validation.measurements) > 1 else ")"),
        )
    for name, value in report.ratios().items():
        if value is not None:
            table.add_row(name.replace("_", " "), f"{value:.3f}")
    console.print(table)
    render_hops(p, console)
    render_cpu(report, console)
