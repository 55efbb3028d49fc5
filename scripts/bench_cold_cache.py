"""What a pause costs: CPU per validated document after a gap, against the
same documents back to back.

    .venv/bin/python scripts/bench_cold_cache.py [--gaps 0,2,5,18,36] [--count 300] [--json FILE]
    .venv/bin/python scripts/bench_cold_cache.py --small [--gaps 0,1,10] [--sleep]
    .venv/bin/python scripts/bench_cold_cache.py --pool-rate 55 [--count 900]

The first form validates the ``invoicectl bench`` mix in this process with
a gap of nothing to do between documents, for each gap in turn (twice,
alternating), and reports the CPU the validating thread used per document.
The gap is spent spinning on the clock (``--sleep``: sleeping instead), so
the process never leaves the CPU: whatever grows with the gap is the
hardware's state (caches, predictors) going cold, not the scheduler. A
control runs beside it: a small pure-Python task with a working set that
fits in a core's cache, timed the same way.

The ``--small`` form times tasks of a few microseconds the same way (a
call that does nothing, ``json.dumps`` of a log line's fields, a 200-byte
``os.write`` to a file, one JSON log line through the services' logging
set-up), in microseconds: what a service pays for each step of an
invoice's handling that follows a wait.

The last form starts the validate service's ``WorkerPool`` (two
processes) and hands it one document every 1/RATE seconds, as an open loop
at that rate would, and reports the workers' CPU per document, read from
``/proc``. Run it on two commits in turn to compare how the pool spreads
quiet traffic.

Run it on a quiet machine (the local stack down or idle): other load
changes both figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from invoicectl.bench import cpu
from invoicectl.bench.generator import Generator
from invoicectl.bench.speed import control_task
from invoicing_common.logs import JsonFormatter
from invoicing_validate.checks import run_checks_many, warm_up
from invoicing_validate.validation import Validator
from invoicing_validate.workers import WorkerPool


def documents(count: int) -> list[tuple[bytes, str]]:
    # The bench's mix with its share of invalid documents, as the services see it.
    return [(d.data, d.filename) for d in Generator("bench-cold-cache").documents(count, 0.1)]


def pause(seconds: float, sleep: bool) -> None:
    if seconds <= 0:
        return
    if sleep:
        time.sleep(seconds)
        return
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def cpu_per_call(calls: list[Callable[[], object]], gap: float, sleep: bool) -> float:
    """Milliseconds of this thread's CPU per call, with ``gap`` seconds
    between calls (not counted)."""
    used = 0.0
    for call in calls:
        started = time.thread_time()
        call()
        used += time.thread_time() - started
        pause(gap, sleep)
    return 1000 * used / len(calls)


def in_process(args: argparse.Namespace) -> dict[str, Any]:
    validator = Validator()
    docs = documents(args.count)
    validate: list[Callable[[], object]] = [partial(validator.validate, data, filename=name) for data, name in docs]
    control = [control_task()] * len(docs)
    for call in validate:  # compile every stylesheet the mix needs
        call()
    gaps = [float(g) / 1000 for g in args.gaps.split(",")]
    rows: dict[float, dict[str, list[float]]] = {g: {"validate": [], "control": []} for g in gaps}
    for _ in range(2):
        for gap in gaps:
            rows[gap]["validate"].append(cpu_per_call(validate, gap, args.sleep))
            rows[gap]["control"].append(cpu_per_call(control, gap, args.sleep))
            print(f"gap {1000 * gap:5.1f} ms: validate {rows[gap]['validate'][-1]:6.3f} ms/doc, "
                  f"control {rows[gap]['control'][-1]:6.3f} ms/call", file=sys.stderr)  # fmt: skip
    base = {name: sum(rows[gaps[0]][name]) / 2 for name in ("validate", "control")}
    result = []
    for gap in gaps:
        row = {"gap_ms": 1000 * gap}
        for name in ("validate", "control"):
            mean = sum(rows[gap][name]) / 2
            row[f"{name}_cpu_ms"] = round(mean, 3)
            row[f"{name}_over_first_gap"] = round(mean / base[name], 3)
        result.append(row)
    print(f"{'gap ms':>7} {'validate ms/doc':>16} {'x':>6} {'control ms/call':>16} {'x':>6}")
    for row in result:
        print(f"{row['gap_ms']:7.1f} {row['validate_cpu_ms']:16.3f} {row['validate_over_first_gap']:6.2f} "
              f"{row['control_cpu_ms']:16.3f} {row['control_over_first_gap']:6.2f}")  # fmt: skip
    return {"mode": "in_process", "documents": len(docs), "spin": not args.sleep, "rows": result}


def small_tasks(args: argparse.Namespace) -> dict[str, Any]:
    """Microseconds of this thread's CPU per call of tiny tasks, per gap."""
    fields = {"ts": "2026-12-02T17:31:57.921+00:00", "level": "info", "service": "invoicing-status",
              "logger": "invoicing_status.agents", "message": "status 203",
              "invoice_id": "f7f98bbe-70c5-4e2e-ab4e-87bea5ae41de"}  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        fd = os.open(Path(folder) / "write.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        log_file = (Path(folder) / "json.log").open("a")
        handler = logging.StreamHandler(log_file)
        handler.setFormatter(JsonFormatter("bench-cold-cache"))
        logger = logging.getLogger("bench_cold_cache.small")
        logger.addHandler(handler)
        logger.propagate = False
        logger.setLevel(logging.INFO)
        tasks: dict[str, Callable[[], object]] = {
            "nothing": lambda: None,
            "json.dumps": lambda: json.dumps(fields),
            "os.write": lambda: os.write(fd, b"x" * 199 + b"\n"),
            "log line": lambda: logger.info("status %s", "203", extra={"invoice_id": fields["invoice_id"]}),
        }
        gaps = [float(g) / 1000 for g in args.gaps.split(",")]
        rows: dict[str, dict[float, list[float]]] = {name: {g: [] for g in gaps} for name in tasks}
        try:
            for _ in range(2):
                for gap in gaps:
                    for name, task in tasks.items():
                        # At most 3 s of gaps per task and gap: fewer calls when the gaps are long.
                        calls = [task] * (args.count if gap == 0 else max(1, min(args.count, int(3 / gap))))
                        rows[name][gap].append(1000 * cpu_per_call(calls, gap, args.sleep))  # ms -> µs
        finally:
            os.close(fd)
            logger.removeHandler(handler)
            log_file.close()
    print(f"{'task':<12}" + "".join(f"{f'gap {1000 * g:g} ms (us, x)':>24}" for g in gaps))
    result = []
    for name in tasks:
        base = sum(rows[name][gaps[0]]) / 2
        row: dict[str, Any] = {"task": name}
        cells = []
        for gap in gaps:
            mean = sum(rows[name][gap]) / 2
            row[f"gap_{1000 * gap:g}_ms_us"] = round(mean, 2)
            cells.append(f"{mean:12.1f} {mean / base:9.1f}x")
        print(f"{name:<12}" + "".join(f"{c:>24}" for c in cells))
        result.append(row)
    return {"mode": "small", "spin": not args.sleep, "rows": result}


async def paced_pool(args: argparse.Namespace) -> dict[str, Any]:
    docs = documents(args.count)
    pool = WorkerPool(2, warm_up=warm_up)
    await pool.start()
    try:
        for doc in docs[:50]:  # each worker's first documents, untimed
            await asyncio.gather(*(pool.run(run_checks_many, ([doc],), 60) for _ in range(2)))
        pids = pool.pids
        before = {pid: cpu.process_seconds(pid) for pid in pids}
        interval = 1 / args.pool_rate
        calls = []
        start = time.perf_counter()
        for n, doc in enumerate(docs):
            calls.append(asyncio.ensure_future(pool.run(run_checks_many, ([doc],), 60)))
            await asyncio.sleep(max(0.0, start + (n + 1) * interval - time.perf_counter()))
        await asyncio.gather(*calls)
        used = {pid: cpu.process_seconds(pid) - before[pid] for pid in pids}
    finally:
        await pool.stop()
    per_doc = 1000 * sum(used.values()) / len(docs)
    shares = sorted((round(100 * u / sum(used.values()), 1) for u in used.values()), reverse=True)
    print(f"{len(docs)} documents at {args.pool_rate:g}/s: workers' CPU {per_doc:.3f} ms per document "
          f"(shares {', '.join(f'{s} %' for s in shares)})")  # fmt: skip
    return {"mode": "pool", "rate": args.pool_rate, "documents": len(docs), "worker_cpu_ms": round(per_doc, 3),
            "worker_shares_percent": shares}  # fmt: skip


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--gaps", default="0,2,5,18,36", help="milliseconds between documents (default 0,2,5,18,36)")
    parser.add_argument("--count", type=int, default=300, help="documents of the bench mix (default 300)")
    parser.add_argument("--sleep", action="store_true", help="sleep through each gap instead of spinning")
    parser.add_argument("--small", action="store_true", help="tiny tasks (microseconds) instead of validations")
    parser.add_argument("--pool-rate", type=float, metavar="RATE", help="feed the worker pool at RATE documents/s")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    if args.pool_rate is not None and args.pool_rate <= 0:
        parser.error("--pool-rate must be above 0")
    if args.small and args.pool_rate:
        parser.error("--small and --pool-rate are different measurements: choose one")
    if args.small:
        result = small_tasks(args)
    elif args.pool_rate:
        result = asyncio.run(paced_pool(args))
    else:
        result = in_process(args)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
