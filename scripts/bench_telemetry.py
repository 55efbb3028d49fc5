"""CPU per telemetry operation, as the services set telemetry up.

    .venv/bin/python scripts/bench_telemetry.py [--count 20000] [--rounds 5] [--json FILE]

Prices the pieces of the per-invoice observability cost one at a time, in
this one process: a span started and ended, a span made current, a counter
add and a histogram record taken inside a sampled span, a JSON log line
(written to a temporary file, as the services write to theirs), and a
trace context injected into and extracted from record headers. Telemetry
is configured by ``invoicing_common.telemetry_setup.configure`` from the
usual ``OTEL_*`` variables, with a Prometheus endpoint on a free loopback
port as each service has, so the same command with, for example,
``OTEL_METRICS_EXEMPLAR_FILTER=trace_based`` shows what one setting costs.

Each figure is the best of the rounds (this machine's noise only ever adds
time), in microseconds of process CPU per operation. In the services the
same operations cost two to three times as much: their caches are colder
(docs/performance.md, "Cold caches").
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from opentelemetry import metrics, propagate, trace

from invoicing_common import telemetry_setup
from invoicing_common.logs import configure_logging


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def best_microseconds(operation: Callable[[], object], count: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(count):
            operation()
        best = min(best, time.process_time() - started)
    return best / count * 1e6


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=20000, help="operations per round (default 20000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per operation, best kept (default 5)")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args(argv)
    if args.count < 1 or args.rounds < 1:
        parser.error("--count and --rounds must be at least 1")

    # A Prometheus endpoint, as each service has: measurements are stored.
    providers = telemetry_setup.configure("invoicing-bench-telemetry", metrics_port=free_port())
    tracer = trace.get_tracer("bench")
    meter = metrics.get_meter("bench")
    counter = meter.create_counter("bench.outcomes")
    histogram = meter.create_histogram("bench.duration", unit="s")

    def span() -> None:
        tracer.start_span("bench", attributes={"invoicing.invoice_id": "inv-1", "invoicing.valid": True}).end()

    def current_span() -> None:
        with tracer.start_as_current_span("bench") as s:
            s.set_attribute("invoicing.invoice_id", "inv-1")

    headers: dict[str, str] = {}
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder, tracer.start_as_current_span("invoice"):
        propagate.inject(headers)
        figures["span started and ended"] = best_microseconds(span, args.count, args.rounds)
        figures["span made current"] = best_microseconds(current_span, args.count, args.rounds)
        figures["counter add"] = best_microseconds(
            lambda: counter.add(1, {"outcome": "routed"}), args.count, args.rounds
        )
        figures["histogram record"] = best_microseconds(
            lambda: histogram.record(0.0123, {"format": "cii", "valid": True}), args.count, args.rounds
        )
        figures["context injected"] = best_microseconds(lambda: propagate.inject({}), args.count, args.rounds)
        figures["context extracted"] = best_microseconds(lambda: propagate.extract(headers), args.count, args.rounds)
        configure_logging("invoicing-bench-telemetry")
        handler = logging.getLogger().handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        with open(Path(folder) / "bench.log", "w", encoding="utf-8") as sink:
            handler.setStream(sink)
            log = logging.getLogger("bench")
            figures["JSON log line"] = best_microseconds(
                lambda: log.info("validated: %s, %d fatal finding(s)", "cii", 0, extra={"invoice_id": "inv-1"}),
                args.count,
                args.rounds,
            )
            handler.setStream(sys.stderr)
    telemetry_setup.shutdown(*providers)

    summary = telemetry_setup.summary()
    print(summary)
    for name, value in figures.items():
        print(f"{name:26s} {value:7.2f} µs")
    if args.json is not None:
        report = {"count": args.count, "rounds": args.rounds, "summary": summary, "microseconds": figures}
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
