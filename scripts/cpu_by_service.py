"""CPU seconds used by each process of the local stack, over a window.

    .venv/bin/python scripts/cpu_by_service.py snap before.json
    ... run something ...
    .venv/bin/python scripts/cpu_by_service.py snap after.json
    .venv/bin/python scripts/cpu_by_service.py diff before.json after.json

A process belongs to the stack component whose pid (``$STACK_RUN_DIR/pids``,
default ``.run/pids``) is its nearest ancestor: a service with its worker
processes, PostgreSQL with its backends, the Kafka broker. Anything else is
listed by command name. Each process counts its own user + system time plus
that of its reaped children; a process that both started and ended inside
the window is missed unless its parent reaped it. Linux only (reads /proc).

`invoicectl bench` reports the same figures per invoice over its measured
phase alone (`cpu_ms_per_invoice`); this script is for other windows.
The reading itself is `invoicectl.bench.cpu`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from invoicectl.bench import cpu

ROOT = Path(__file__).resolve().parents[1]
# Below this, a label is noise (a tick of some idle process).
SHOWN_SECONDS = 0.05


def snapshot() -> cpu.Groups:
    """CPU seconds of every process now, by stack component or command."""
    run_dir = cpu.stack_run_dir(os.environ, ROOT / ".run")
    return cpu.group(cpu.read_processes(), cpu.read_roots(run_dir))


def diff(before: cpu.Groups, after: cpu.Groups) -> list[tuple[str, float]]:
    """(label, CPU seconds) used in between, most first, noise left out."""
    used = cpu.diff(before, after)
    return sorted(((name, s) for name, s in used.items() if s >= SHOWN_SECONDS), key=lambda row: -row[1])


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "snap":
        Path(argv[1]).write_text(json.dumps(snapshot()))
        return 0
    if len(argv) == 3 and argv[0] == "diff":
        rows = diff(json.loads(Path(argv[1]).read_text()), json.loads(Path(argv[2]).read_text()))
        for name, used in rows:
            print(f"{used:8.1f} s  {name}")
        print(f"{sum(used for _, used in rows):8.1f} s  total")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
