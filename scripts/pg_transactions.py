"""A service's PostgreSQL transactions, read from the server's statement log
while a command runs: how many round trips each takes, how long from BEGIN
to the end of COMMIT, and how much of that is the server's own time; and
how many statements it ran outside a transaction.

    . .run/env
    .venv/bin/python scripts/pg_transactions.py --app status --marker processed_events -- \\
        invoicectl bench --mode open --rate 50 --count 900 --no-baselines --seed 7

Statement logging (``log_min_duration_statement = 0``, with the
application's name in ``log_line_prefix``) is switched on with ``ALTER
SYSTEM`` for the command's run and reset after it, whatever happens; it
slows every statement a little, so the figures compare runs taken this
way, not runs taken without it. Needs the local stack (``make up``): its
PostgreSQL log (``.run/logs/postgres.log``) and the admin account of
``.run/env`` (``DATABASE_URL``, ``PGPASSFILE``).

A round trip is a statement the client waited for; the executions of one
prepared statement that follow each other without another statement
between them count as one (asyncpg's ``executemany`` sends them together).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]

from invoicectl.bench.cpu import stack_run_dir
from invoicectl.bench.wrapping import parse_with_command

ROOT = Path(__file__).resolve().parent.parent
LOG = stack_run_dir(os.environ, ROOT / ".run") / "logs" / "postgres.log"
PREFIX = "%m [%p] %a "
_LINE = re.compile(
    r"^(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) \S+ \[(?P<pid>\d+)\] (?P<app>\S*) LOG:  "
    r"duration: (?P<ms>[\d.]+) ms  (?P<kind>statement|execute|bind|parse)(?: (?P<name>[^:]*))?: (?P<text>.*)$"
)


_OPENS = ("BEGIN", "START")
_ENDS = ("COMMIT", "ROLLBACK", "END")


@dataclass(frozen=True)
class _Entry:
    """One logged statement of the service: a transaction's boundary
    (``word`` BEGIN, COMMIT...), an execution, or its bind or parse step."""

    pid: str
    at: float
    ms: float
    kind: str
    name: str | None
    text: str
    word: str

    @property
    def opens(self) -> bool:
        return self.kind == "statement" and self.word in _OPENS

    @property
    def ends(self) -> bool:
        return self.kind == "statement" and self.word in _ENDS


def _entries(lines: list[str], app: str) -> Iterator[_Entry]:
    for line in lines:
        m = _LINE.match(line)
        if m is None or m["app"] != app:
            continue
        text = m["text"].strip()
        yield _Entry(
            pid=m["pid"],
            at=datetime.strptime(m["ts"], "%Y-%m-%d %H:%M:%S.%f").timestamp(),
            ms=float(m["ms"]),
            kind=m["kind"],
            name=m["name"] if m["kind"] == "execute" else None,
            text=text,
            word=text.split(None, 1)[0].rstrip(";").upper() if text else "",
        )


@dataclass
class Transaction:
    pid: str
    start: float
    end: float = 0.0
    statements: int = 0
    round_trips: int = 0
    server_ms: float = 0.0
    marked: bool = False
    _last_name: str | None = None

    @property
    def wall_ms(self) -> float:
        return (self.end - self.start) * 1000


def transactions(lines: list[str], app: str, marker: str = "") -> list[Transaction]:
    """Committed or rolled-back transactions of ``app``, in the order they
    ended; with ``marker``, only those with a statement containing it."""
    done: list[Transaction] = []
    open_: dict[str, Transaction] = {}
    for e in _entries(lines, app):
        if e.opens:
            open_[e.pid] = Transaction(e.pid, e.at, server_ms=e.ms)
            continue
        tx = open_.get(e.pid)
        if tx is None:
            continue
        tx.server_ms += e.ms
        if e.ends:
            tx.end = e.at
            del open_[e.pid]
            if tx.marked or not marker:
                done.append(tx)
            continue
        if e.kind in ("bind", "parse"):
            continue
        tx.statements += 1
        if e.name is None or e.name != tx._last_name:
            tx.round_trips += 1
        tx._last_name = e.name
        if marker and marker.lower() in e.text.lower():
            tx.marked = True
    return done


def loose_statements(lines: list[str], app: str) -> int:
    """Statements of ``app`` run outside an explicit transaction (each its
    own round trip and commit: an outbox relay's looks and marks, say)."""
    inside: set[str] = set()
    count = 0
    for e in _entries(lines, app):
        if e.opens:
            inside.add(e.pid)
        elif e.ends:
            inside.discard(e.pid)
        elif e.kind not in ("bind", "parse") and e.pid not in inside:
            count += 1
    return count


def summary(found: list[Transaction]) -> dict[str, float | int]:
    if not found:
        return {"transactions": 0}

    def pct(values: list[float], q: int) -> float:
        return (
            round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 2) if len(values) > 1 else values[0]
        )

    wall = [t.wall_ms for t in found]
    return {
        "transactions": len(found),
        "round_trips_p50": statistics.median(t.round_trips for t in found),
        "round_trips_max": max(t.round_trips for t in found),
        "statements_p50": statistics.median(t.statements for t in found),
        "begin_to_commit_ms_p50": round(statistics.median(wall), 2),
        "begin_to_commit_ms_p90": pct(wall, 90),
        "server_ms_p50": round(statistics.median(t.server_ms for t in found), 2),
    }


async def _set_logging(on: bool) -> None:
    conn = await asyncpg.connect(os.environ["DATABASE_URL"])
    try:
        if on:
            await conn.execute(f"ALTER SYSTEM SET log_line_prefix = '{PREFIX}'")
            await conn.execute("ALTER SYSTEM SET log_min_duration_statement = 0")
        else:
            await conn.execute("ALTER SYSTEM RESET log_min_duration_statement")
            await conn.execute("ALTER SYSTEM RESET log_line_prefix")
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--app", default="status", help="application_name of the service's connections (its schema)")
    parser.add_argument("--marker", default="", help="only transactions with a statement containing this text")
    parser.add_argument("--log", type=Path, default=LOG, help="the server's log file")
    parser.add_argument("--json", dest="json_out", type=Path, help="write the figures here too")
    args = parse_with_command(parser, command_help="the command to run while logging")
    command = args.command
    start = args.log.stat().st_size
    asyncio.run(_set_logging(True))
    try:
        code = subprocess.call(command)
    finally:
        asyncio.run(_set_logging(False))
    with args.log.open(errors="replace") as f:
        f.seek(start)
        lines = f.read().splitlines()
    figures = summary(transactions(lines, args.app, args.marker))
    figures["statements_outside_transactions"] = loose_statements(lines, args.app)
    print(json.dumps(figures, indent=2))
    if args.json_out is not None:
        args.json_out.write_text(json.dumps({"app": args.app, "marker": args.marker, **figures}, indent=2) + "\n")
    if not figures["transactions"] and not figures["statements_outside_transactions"]:
        print(f"no statement of {args.app!r} in the log", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    raise SystemExit(main())
