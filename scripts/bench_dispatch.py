"""How long a document waits for its validation when documents come in
bursts: the validate service's dispatcher and worker pool, without the rest
of the stack.

    .venv/bin/python scripts/bench_dispatch.py [--rate 55] [--burst 4] [--count 1200] [--json FILE]
    .venv/bin/python scripts/bench_dispatch.py --closed [--concurrency 16] [--count 1200]

Starts the validate service's ``WorkerPool`` (two processes) behind its
``ChunkingDispatcher``, as ``invoicing_validate.agents`` does, and submits
the ``invoicectl bench`` mix in bursts of ``--burst`` documents at an
average of ``--rate`` documents/s. The validate service sees bursts
because a Kafka fetch hands it every record that arrived during the fetch.
Reports each document's time from submission to its report (p50, p95,
p99, max), the chunks the workers got, and the workers' CPU per document.

``--closed`` keeps ``--concurrency`` documents in flight instead (the
service's ``VALIDATE_CONCURRENCY``, 16 by default), as under a backlog, and
also reports documents/s.
Run it on two commits in turn to compare dispatch policies; run it on a
quiet machine (the local stack down or idle).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from invoicectl.bench import cpu
from invoicectl.bench.generator import Generator
from invoicectl.bench.report import percentile
from invoicing_validate.checks import run_checks_many, warm_up
from invoicing_validate.dispatch import ChunkingDispatcher
from invoicing_validate.validation import ValidationReport
from invoicing_validate.workers import WorkerPool

_TIME_LIMIT_SECONDS = 60.0


async def run(args: argparse.Namespace) -> dict[str, Any]:
    docs = [(d.data, d.filename) for d in Generator("bench-dispatch").documents(args.count, 0.1)]
    pool = WorkerPool(2, warm_up=warm_up)
    await pool.start()
    chunks: Counter[int] = Counter()

    async def run_many(documents: list[tuple[bytes, str]]) -> list[ValidationReport]:
        chunks[len(documents)] += 1
        reports: list[ValidationReport] = await pool.run(
            run_checks_many, (documents,), _TIME_LIMIT_SECONDS * len(documents)
        )
        return reports

    dispatcher: ChunkingDispatcher[tuple[bytes, str], ValidationReport] = ChunkingDispatcher(pool.size, run_many)

    slots = asyncio.Semaphore(args.concurrency)

    async def timed(doc: tuple[bytes, str]) -> float:
        start = time.perf_counter()
        await dispatcher.submit(doc)
        return time.perf_counter() - start

    async def in_slot(doc: tuple[bytes, str]) -> float:
        async with slots:
            return await timed(doc)

    try:
        for doc in docs[:40]:  # each worker's first documents, untimed
            await asyncio.gather(*(pool.run(run_checks_many, ([doc],), _TIME_LIMIT_SECONDS) for _ in range(2)))
        chunks.clear()
        pids = pool.pids
        before = {pid: cpu.process_seconds(pid) for pid in pids}
        calls: list[asyncio.Future[float]] = []
        start = time.perf_counter()
        if args.closed:
            calls = [asyncio.ensure_future(in_slot(doc)) for doc in docs]
        else:
            interval = args.burst / args.rate
            for n, first in enumerate(range(0, len(docs), args.burst)):
                calls.extend(asyncio.ensure_future(timed(doc)) for doc in docs[first : first + args.burst])
                await asyncio.sleep(max(0.0, start + (n + 1) * interval - time.perf_counter()))
        waits = await asyncio.gather(*calls)
        elapsed = time.perf_counter() - start
        used = sum(cpu.process_seconds(pid) - before[pid] for pid in pids)
    finally:
        await pool.stop()
    ms = [1000 * w for w in waits]
    w = {
        "p50": round(percentile(ms, 50), 1),
        "p95": round(percentile(ms, 95), 1),
        "p99": round(percentile(ms, 99), 1),
        "max": round(max(ms), 1),
        "mean": round(statistics.fmean(ms), 1),
    }
    figures: dict[str, Any] = {
        "mode": "closed" if args.closed else "bursts",
        "rate": None if args.closed else args.rate,
        "burst": None if args.closed else args.burst,
        "concurrency": args.concurrency if args.closed else None,
        "documents_per_s": round(len(docs) / elapsed, 1),
        "documents": len(docs),
        "wait_ms": w,
        "chunks": {str(size): count for size, count in sorted(chunks.items())},
        "worker_cpu_ms_per_document": round(1000 * used / len(docs), 3),
    }
    load = (
        f"{args.concurrency} in flight, {figures['documents_per_s']} documents/s"
        if args.closed
        else f"in bursts of {args.burst} at {args.rate:g}/s"
    )
    print(
        f"{len(docs)} documents {load}: wait p50 {w['p50']} p95 {w['p95']} p99 {w['p99']} max {w['max']} ms; "
        f"chunks {figures['chunks']}; workers' CPU {figures['worker_cpu_ms_per_document']} ms per document"
    )
    return figures


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=55.0, help="documents per second on average (default 55)")
    parser.add_argument("--burst", type=int, default=4, help="documents submitted together (default 4)")
    parser.add_argument("--count", type=int, default=1200, help="documents of the bench mix (default 1200)")
    parser.add_argument("--closed", action="store_true", help="keep --concurrency documents in flight instead")
    parser.add_argument("--concurrency", type=int, default=16, help="documents in flight with --closed (default 16)")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args(argv)
    if args.rate <= 0 or min(args.burst, args.count, args.concurrency) < 1:
        parser.error("--rate must be positive, --burst, --count and --concurrency at least 1")
    figures = asyncio.run(run(args))
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
