"""CPU seconds used by each process of the local stack, over a window.

    .venv/bin/python scripts/cpu_by_service.py snap before.json
    ... run something (e.g. invoicectl bench --no-baselines) ...
    .venv/bin/python scripts/cpu_by_service.py snap after.json
    .venv/bin/python scripts/cpu_by_service.py diff before.json after.json

A process belongs to the stack component whose pid (``$STACK_RUN_DIR/pids``,
default ``.run/pids``) is its nearest ancestor: a service with its worker
processes, PostgreSQL with its backends, the Kafka broker. Anything else is
listed by command name (e.g. the bench client). Each process counts its own
user + system time plus that of its reaped children; a process that both
started and ended inside the window is missed unless its parent reaped it.
Linux only (reads /proc).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")


def _processes() -> dict[int, tuple[int, float, str]]:
    """pid -> (parent pid, CPU seconds, command)."""
    out: dict[int, tuple[int, float, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            command = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # ended while we looked
        # The command name in stat may hold spaces and parentheses.
        fields = stat[stat.rindex(")") + 2 :].split()
        utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
        out[int(entry)] = (int(fields[1]), (utime + stime + cutime + cstime) / TICKS, command.strip())
    return out


def _label(command: str) -> str:
    words = command.split()
    if not words:
        return "other: (kernel)"
    name = Path(words[0]).name
    if name.startswith("python") and len(words) > 1:
        name = " ".join(Path(w).name for w in words[1:3])
    return f"other: {name}"


def snapshot() -> dict[str, dict[str, float]]:
    run_dir = Path(os.environ.get("STACK_RUN_DIR", ROOT / ".run"))
    roots = {int(p.read_text()): p.stem for p in (run_dir / "pids").glob("*.pid") if p.read_text().strip().isdigit()}
    processes = _processes()
    groups: dict[str, dict[str, float]] = {}
    for pid, (_, cpu, command) in processes.items():
        component, current = None, pid
        for _ in range(64):  # walk up to the nearest stack root
            if current in roots:
                component = roots[current]
                break
            if current not in processes:
                break
            current = processes[current][0]
        groups.setdefault(component or _label(command), {})[str(pid)] = cpu
    return groups


def diff(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> list[tuple[str, float]]:
    rows = []
    for group, pids in after.items():
        used = sum(cpu - before.get(group, {}).get(pid, 0.0) for pid, cpu in pids.items())
        if used >= 0.05:
            rows.append((group, used))
    return sorted(rows, key=lambda row: -row[1])


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "snap":
        Path(argv[1]).write_text(json.dumps(snapshot()))
        return 0
    if len(argv) == 3 and argv[0] == "diff":
        rows = diff(json.loads(Path(argv[1]).read_text()), json.loads(Path(argv[2]).read_text()))
        for group, used in rows:
            print(f"{used:8.1f} s  {group}")
        print(f"{sum(used for _, used in rows):8.1f} s  total")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
