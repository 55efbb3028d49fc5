"""``--rate auto``: the open loop's rate from a closed-loop capacity run.

A fixed ``--rate`` means something different on each machine (and on the
same machine from one hour to the next); a fraction of the capacity just
measured puts the open loop at the same relative load everywhere.
"""

from __future__ import annotations

import math

from invoicectl.bench.report import Calibration, PipelineFigures

AUTO = "auto"
DEFAULT_FRACTION = 0.5
DEFAULT_CALIBRATE_COUNT = 1000
# Fewer final statuses say little about a capacity.
MIN_CALIBRATE_COUNT = 10
MIN_RATE = 0.1


def parse_rate(value: str) -> float | None:
    """``--rate``: submissions/s, or None for "auto". Raises ValueError."""
    text = value.strip().lower()
    if text == AUTO:
        return None
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"{value!r} is neither a number of submissions per second nor 'auto'") from None
    if not math.isfinite(number) or number < MIN_RATE:
        raise ValueError(f"{value!r}: the rate must be at least {MIN_RATE}/s")
    return number


def split_count(count: int, calibrate_count: int | None) -> tuple[int, int]:
    """(calibration, open loop) shares of ``count`` documents. By default the
    calibration takes a third, at most DEFAULT_CALIBRATE_COUNT. Raises
    ValueError when either phase would be too small."""
    calibrate = min(DEFAULT_CALIBRATE_COUNT, count // 3) if calibrate_count is None else calibrate_count
    if calibrate < MIN_CALIBRATE_COUNT:
        raise ValueError(
            f"the calibration needs at least {MIN_CALIBRATE_COUNT} invoices (it has {calibrate} of --count {count})"
        )
    if calibrate >= count:
        raise ValueError(f"--count {count} leaves no invoice for the open loop after {calibrate} for the calibration")
    return calibrate, count - calibrate


def choose_rate(run: PipelineFigures, fraction: float) -> Calibration:
    """The capacity is the closed loop's end-to-end rate over the whole run,
    as issue 18 measured it (292/s, then open loop at 146/s). Not the
    steady rate: on a calibration of 800 invoices it read 201.5/s against
    123.2/s overall, and an open loop at half of it (100.8/s) outran what
    the pipeline sustained (95/s), so invoices queued for a second at
    validate and the latencies measured the queue. Raises ValueError when
    the run measured no capacity."""
    if not fraction > 0:
        raise ValueError(f"the fraction of the capacity must be positive, not {fraction}")
    if not run.e2e_invoices_per_s > 0:
        raise ValueError(
            f"the calibration run measured no capacity ({run.acked} of {run.count} acknowledged, {run.lost} lost)"
        )
    capacity, source = run.e2e_invoices_per_s, "e2e_invoices_per_s"
    target = max(round(capacity * fraction, 2), MIN_RATE)
    return Calibration(
        fraction=fraction, capacity_invoices_per_s=capacity, capacity_from=source, target_rate=target, run=run
    )
