"""CPU used by each component of the local stack over a window, read from /proc.

A process belongs to the stack component whose pid (the file
``$STACK_RUN_DIR/pids/<component>.pid``) is its nearest ancestor: a service
with its worker processes, PostgreSQL with its backends, the Kafka broker.
Any other process is labelled by its command. A process's CPU is its own
user + system time plus that of the children it reaped, so a process that
both started and ended inside a window is missed unless its parent reaped
it. Linux only: without /proc (or without the stack's pid files) a reading
is unavailable, with the reason, rather than an error.
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

PROC = Path("/proc")
LOAD_GENERATOR = "load generator (this bench)"
OTHER = "other processes"
OTHER_PREFIX = "other: "
TOTAL = "total"

# Label (component or command) -> pid -> CPU seconds. Pids are strings:
# the shape survives a JSON round trip (`scripts/cpu_by_service.py snap`).
Groups = dict[str, dict[str, float]]


class Process(NamedTuple):
    parent: int
    cpu_seconds: float
    command: str


class MachineTimes(NamedTuple):
    """Clock ticks of all cores since boot (/proc/stat)."""

    busy: int
    total: int


class Unavailable(Exception):
    """No reading can be taken here; the message says why, in one line."""


def stack_run_dir(environ: Mapping[str, str], default: Path) -> Path:
    """Where `deploy/local/stack.py` keeps its state (`.run/env` exports it)."""
    return Path(environ.get("STACK_RUN_DIR") or default)


def read_roots(run_dir: Path) -> dict[int, str]:
    """pid -> component, from the stack's pid files; empty without any."""
    roots: dict[int, str] = {}
    for path in sorted((run_dir / "pids").glob("*.pid")):
        try:
            text = path.read_text().strip()
        except OSError:
            continue  # removed while we looked: that component is stopping
        if text.isdigit():
            roots[int(text)] = path.stem
    return roots


def parse_stat(text: str, ticks_per_second: int) -> tuple[int, float]:
    """(parent pid, CPU seconds) from the text of /proc/<pid>/stat."""
    # The command name (second field) may itself hold spaces and parentheses.
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return int(fields[1]), (utime + stime + cutime + cstime) / ticks_per_second


def process_seconds(pid: int, proc: Path = PROC) -> float:
    """CPU seconds one process has used so far (with its reaped children)."""
    return parse_stat((proc / str(pid) / "stat").read_text(), os.sysconf("SC_CLK_TCK"))[1]


def read_processes(proc: Path = PROC) -> dict[int, Process]:
    ticks = os.sysconf("SC_CLK_TCK")
    processes: dict[int, Process] = {}
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            stat = (proc / entry / "stat").read_text()
            command = (proc / entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # ended while we looked
        parent, cpu_seconds = parse_stat(stat, ticks)
        processes[int(entry)] = Process(parent, cpu_seconds, command.strip())
    return processes


def parse_machine(text: str) -> MachineTimes:
    """From /proc/stat's first line: user nice system idle iowait irq softirq
    steal (the guest columns after them are already counted in user)."""
    fields = [int(v) for v in text.split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]
    return MachineTimes(busy=sum(fields) - idle, total=sum(fields))


def component_of(pid: int, processes: Mapping[int, Process], roots: Mapping[int, str]) -> str | None:
    """The component of the nearest root among ``pid`` and its ancestors."""
    seen: set[int] = set()
    current = pid
    # A pid reused while we read /proc could close a loop of parents.
    while current not in seen:
        if current in roots:
            return roots[current]
        seen.add(current)
        process = processes.get(current)
        if process is None:
            return None
        current = process.parent
    return None


def label(command: str) -> str:
    """A process outside the stack, by its program; for an interpreter, by
    its script and first argument (`python .../invoicectl bench`)."""
    words = command.split()
    if not words:
        return OTHER_PREFIX + "(kernel)"
    name = Path(words[0]).name
    if name.startswith("python") and len(words) > 1:
        name = " ".join(Path(word).name for word in words[1:3])
    return OTHER_PREFIX + name


def group(processes: Mapping[int, Process], roots: Mapping[int, str]) -> Groups:
    groups: Groups = {}
    for pid, process in processes.items():
        name = component_of(pid, processes, roots) or label(process.command)
        groups.setdefault(name, {})[str(pid)] = process.cpu_seconds
    return groups


def _used(before: float | None, after: float) -> float:
    # A process's CPU time never goes down: if it did, the pid was reused.
    return after if before is None or after < before else after - before


def diff(before: Groups, after: Groups) -> dict[str, float]:
    """CPU seconds each label of ``after`` used since ``before``. A process
    is matched by pid whatever its label was (one whose parent ended is
    adopted elsewhere); one that started in between counts all its time,
    one that ended in between is not in ``after`` and counts nothing."""
    earlier = {pid: cpu for pids in before.values() for pid, cpu in pids.items()}
    return {name: sum(_used(earlier.get(pid), cpu) for pid, cpu in pids.items()) for name, pids in after.items()}


def per_invoice(used: Mapping[str, float], components: Collection[str], invoices: int) -> dict[str, float]:
    """Milliseconds per invoice: each stack component (most costly first),
    the load generator, every other process of the machine together, and
    ``total``, the stack components' sum (the pipeline's cost)."""
    if invoices <= 0:
        raise ValueError(f"no invoice to share the CPU among ({invoices})")
    ms: dict[str, float] = dict.fromkeys(components, 0.0)
    for name, seconds in used.items():
        key = name if name in ms or name == LOAD_GENERATOR else OTHER
        ms[key] = ms.get(key, 0.0) + seconds * 1000.0 / invoices
    stack = sorted(components, key=lambda name: -ms[name])
    shown = {name: round(ms[name], 2) for name in stack}
    for extra in (LOAD_GENERATOR, OTHER):
        if extra in ms:
            shown[extra] = round(ms[extra], 2)
    shown[TOTAL] = round(sum(ms[name] for name in components), 2)
    return shown


def busy_share(before: MachineTimes | None, after: MachineTimes | None) -> float | None:
    """Share of all cores' time spent busy in between (1.0: every core)."""
    if before is None or after is None or after.total <= before.total:
        return None
    return round((after.busy - before.busy) / (after.total - before.total), 3)


@dataclass(frozen=True)
class Reading:
    at: float  # time.monotonic()
    groups: Groups
    # Stack components running at the reading.
    components: frozenset[str]
    machine: MachineTimes | None


def _machine(proc: Path) -> MachineTimes | None:
    try:
        return parse_machine((proc / "stat").read_text())
    except (OSError, ValueError, IndexError):
        return None  # optional: the per-component figures do without it


def read(run_dir: Path, also: Mapping[int, str] | None = None, proc: Path = PROC) -> Reading:
    """The CPU of every process now, grouped by stack component; ``also``
    names more roots (the bench's own pid). Raises Unavailable."""
    if not (proc / "self" / "stat").is_file():
        raise Unavailable(f"no {proc} on this system (the CPU per component is read from Linux's /proc)")
    stack = read_roots(run_dir)
    if not stack:
        raise Unavailable(f"no stack pid file in {run_dir / 'pids'} (is the stack up? is STACK_RUN_DIR set?)")
    machine = _machine(proc)
    try:
        processes = read_processes(proc)
    except OSError as exc:
        raise Unavailable(f"cannot read {proc}: {exc.strerror}") from exc
    roots = {**stack, **(also or {})}
    running = frozenset(name for pid, name in stack.items() if pid in processes)
    return Reading(time.monotonic(), group(processes, roots), running, machine)


@dataclass(frozen=True)
class CpuUse:
    """CPU of one bench phase, per invoice that reached a final status in
    it; without a measurement, only the reason."""

    ms_per_invoice: dict[str, float] | None = None
    window_seconds: float | None = None
    busy_share: float | None = None
    unavailable: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "cpu_ms_per_invoice": self.ms_per_invoice,
            "cpu_window_seconds": self.window_seconds,
            "cpu_busy_share": self.busy_share,
            "cpu_unavailable": self.unavailable,
        }


def use(before: Reading, after: Reading, invoices: int) -> CpuUse:
    if invoices <= 0:
        return CpuUse(unavailable="no invoice reached a final status")
    return CpuUse(
        ms_per_invoice=per_invoice(diff(before.groups, after.groups), after.components, invoices),
        window_seconds=round(after.at - before.at, 3),
        busy_share=busy_share(before.machine, after.machine),
    )


class Window:
    """A reading at the start of a phase and one at its end (the first
    ``stop``; later ones change nothing)."""

    def __init__(self, run_dir: Path, also: Mapping[int, str] | None = None, proc: Path = PROC) -> None:
        self._run_dir, self._also, self._proc = run_dir, also, proc
        self._start: Reading | None = None
        self._stop: Reading | None = None
        self._reason: str | None = None

    def start(self) -> None:
        try:
            self._start = read(self._run_dir, self._also, self._proc)
        except Unavailable as exc:
            self._reason = str(exc)

    def stop(self) -> None:
        if self._start is None or self._stop is not None or self._reason is not None:
            return
        try:
            self._stop = read(self._run_dir, self._also, self._proc)
        except Unavailable as exc:
            self._reason = str(exc)

    def use(self, invoices: int) -> CpuUse:
        if self._start is None or self._stop is None:
            return CpuUse(unavailable=self._reason or "the phase was not measured")
        return use(self._start, self._stop, invoices)
