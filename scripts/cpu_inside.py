"""Where the CPU goes inside two of the stack's processes while a command
runs: the Kafka broker's threads, grouped by name, and PostgreSQL's
processes, grouped by role (each service's backends by its account,
the background processes by what they do).

    . .run/env
    .venv/bin/python scripts/cpu_inside.py -- \\
        invoicectl bench --mode open --rate 50 --count 1200 --no-baselines --seed 7

`scripts/cpu_by_service.py` and the bench's ``cpu_ms_per_invoice`` give a
component's whole CPU; this splits two of them further, which is how the
eleventh round of issue 18 found the broker's collector and its JIT
compiler (docs/performance-history.md). PostgreSQL's short-lived processes (an
autovacuum worker, a connection that came and went) show up as the
postmaster's reaped children. Linux only: reads /proc; needs the local
stack's pid files (``.run/pids``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

from invoicectl.bench.cpu import read_roots, stack_run_dir
from invoicectl.bench.wrapping import parse_with_command

ROOT = Path(__file__).resolve().parent.parent
PROC = Path("/proc")
REAPED = "postmaster's reaped children (autovacuum workers, closed connections)"

_BACKEND = re.compile(r"^postgres: (\S+) \S+ [\d.:a-f\[\]]+\(\d+\)")


def thread_group(name: str) -> str:
    """A JVM thread's name without its numbers: one group per pool."""
    return re.sub(r"\d+", "N", name.strip())


def pg_role(cmdline: str) -> str:
    """What a PostgreSQL child process is, from its command line: a backend
    by its account (the services each have their own), else its title."""
    match = _BACKEND.match(cmdline)
    if match:
        return f"backend: {match.group(1)}"
    title = cmdline.removeprefix("postgres: ").strip()
    # An autovacuum worker's title names the table it is on: one group.
    return "autovacuum worker" if title.startswith("autovacuum worker") else title


def _times(stat: str) -> tuple[int, int, int]:
    """(parent pid, own ticks, reaped children's ticks) from /proc/.../stat."""
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


def kafka_threads(pid: int, proc: Path = PROC) -> Counter[str]:
    """Clock ticks per thread group of one JVM."""
    out: Counter[str] = Counter()
    for task in (proc / str(pid) / "task").iterdir():
        try:
            name = (task / "comm").read_text()
            _, own, _ = _times((task / "stat").read_text())
        except OSError:
            continue  # the thread ended while we looked
        out[thread_group(name)] += own
    return out


def postgres_processes(postmaster: int, proc: Path = PROC) -> Counter[str]:
    """Clock ticks per role of the postmaster and its children."""
    out: Counter[str] = Counter()
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent, own, reaped = _times((entry / "stat").read_text())
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(entry.name) == postmaster:
            out["postmaster"] += own
            out[REAPED] += reaped
        elif parent == postmaster:
            out[pg_role(cmdline)] += own
    return out


def difference(before: Counter[str], after: Counter[str], ticks_per_second: int) -> dict[str, float]:
    """CPU seconds per group over the window, largest first; groups that
    appeared during it count from zero, and ones that ended are dropped."""
    seconds = {k: (v - before.get(k, 0)) / ticks_per_second for k, v in after.items()}
    return dict(sorted(((k, round(v, 2)) for k, v in seconds.items() if v > 0), key=lambda kv: -kv[1]))


def _print(title: str, figures: dict[str, float], top: int) -> None:
    total = sum(figures.values())
    print(f"{title}: {total:.2f} s of CPU")
    for name, seconds in list(figures.items())[:top]:
        print(f"  {seconds:8.2f} s  {100 * seconds / total if total else 0:5.1f} %  {name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--top", type=int, default=12, help="groups shown per process (default 12)")
    parser.add_argument("--json", dest="json_out", type=Path, help="write every group's seconds here too")
    args = parse_with_command(parser)
    command = args.command
    pids = {name: pid for pid, name in read_roots(stack_run_dir(os.environ, ROOT / ".run")).items()}
    missing = [name for name in ("kafka", "postgres") if name not in pids]
    if missing:
        print(f"no pid file for {', '.join(missing)}: is the local stack up (make up)?", file=sys.stderr)
        return 2
    kafka_before, pg_before = kafka_threads(pids["kafka"]), postgres_processes(pids["postgres"])
    code = subprocess.call(command)
    kafka_after, pg_after = kafka_threads(pids["kafka"]), postgres_processes(pids["postgres"])
    ticks = os.sysconf("SC_CLK_TCK")
    figures = {
        "kafka_threads": difference(kafka_before, kafka_after, ticks),
        "postgres_processes": difference(pg_before, pg_after, ticks),
    }
    _print("Kafka broker, by thread group", figures["kafka_threads"], args.top)
    _print("PostgreSQL, by process role", figures["postgres_processes"], args.top)
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(figures, indent=2) + "\n")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
