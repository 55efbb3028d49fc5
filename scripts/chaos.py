"""`make chaos`: the fault-injection suite against the local stack.

Each scenario runs an open-loop load while it injects one fault, then
checks the run after the fact (tests/chaos/harness.py): 0 invoices lost,
0 doubled effects, every invoice final, recovery within RECOVERY_BOUND.
The results replace the table between the markers in docs/reliability.md
(and go to chaos-report.json). Bounded: a scenario that has not finished
when the suite's 20 minutes are up is not started; exit 1 if any scenario
fails or was not run.

    python scripts/chaos.py [--count N] [--rate R] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.chaos import harness  # noqa: E402

BUDGET_SECONDS = 20 * 60
# A killed service is back (SERVING), a broker or the database accepts
# connections again, a dead worker is replaced, within this.
RECOVERY_BOUND = 60.0
# With three brokers, one of them killed: the pipeline does not pause, every
# invoice is final within this of its submission.
NO_PAUSE_BOUND = 15.0
BEGIN, END = "<!-- chaos:begin -->", "<!-- chaos:end -->"


@contextlib.asynccontextmanager
async def nothing() -> AsyncIterator[None]:
    yield


async def no_fault(_run: harness.Run) -> float:
    return 0.0


Setup = Callable[[], contextlib.AbstractAsyncContextManager[None]]
SCENARIOS: list[tuple[str, harness.Fault, Setup]] = [
    ("SIGKILL ingest, 3 times", harness.kill_service("ingest"), nothing),
    ("SIGKILL validate, 3 times", harness.kill_service("validate"), nothing),
    ("SIGKILL route, 3 times", harness.kill_service("route"), nothing),
    ("SIGKILL status, 3 times", harness.kill_service("status"), nothing),
    ("SIGKILL a validation worker", harness.kill_a_worker, nothing),
    ("rebalance storm: validate 1 -> 2 -> 1", harness.rebalance_storm, nothing),
    ("PostgreSQL restart", harness.restart_postgres, nothing),
    ("Kafka broker SIGKILL and restart", harness.kill_kafka, nothing),
    ("poison records", harness.poison, nothing),
    ("a record that can never be produced (too large)", harness.too_large, nothing),
    ("database latency +20 ms each way", no_fault, lambda: harness.database_latency(0.020)),
]


def commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


async def run(count: int, rate: float, only: list[str]) -> list[dict[str, object]]:
    await harness.stack("up")
    for csv, command in (("samples/directory.csv", "import"), ("samples/directory-services.csv", "import-services")):
        proc = await asyncio.create_subprocess_exec(
            str(harness.BIN / "invoicectl"), "directory", command, str(ROOT / csv),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"directory {command} failed: {err.decode(errors='replace')}")
    started = time.monotonic()
    results: list[dict[str, object]] = []
    async with harness.workdir() as workdir:
        for number, (name, fault, setup) in enumerate(SCENARIOS):
            if only and not any(o.lower() in name.lower() for o in only):
                continue
            replicated = fault is harness.kill_kafka and harness.brokers() >= 3
            if replicated:
                name = f"{name}, 1 of {harness.brokers()} brokers"
            if time.monotonic() - started > BUDGET_SECONDS:
                results.append({"scenario": name, "ok": False, "notes": ["not run: the suite's time was up"]})
                continue
            print(f"[chaos] {name} ...", flush=True)
            began = time.monotonic()
            try:
                async with setup():
                    outcome = await harness.scenario(f"s{number}", fault, count=count, rate=rate, workdir=workdir)
                outcome.scenario = name
                result = outcome.as_json()
                if outcome.recovery_seconds > RECOVERY_BOUND:
                    result["ok"] = False
                    result["notes"] = [*outcome.notes, f"recovery above {RECOVERY_BOUND:.0f}s"]
                if replicated and outcome.max_e2e_seconds > NO_PAUSE_BOUND:
                    result["ok"] = False
                    result["notes"] = [*outcome.notes, f"an invoice took over {NO_PAUSE_BOUND:.0f}s: a pause"]
            except Exception as exc:  # noqa: BLE001 - one scenario's failure is reported, the suite goes on
                result = {"scenario": name, "ok": False, "notes": [f"{type(exc).__name__}: {exc}"[:500]]}
                # Whatever the scenario left down comes back for the next one.
                with contextlib.suppress(Exception):
                    await harness.stack("up")
            result["seconds"] = round(time.monotonic() - began, 1)
            print(f"[chaos] {name}: {json.dumps(result)}", flush=True)
            results.append(result)
    return results


def table(results: list[dict[str, object]], count: int, rate: float) -> str:
    lines = [
        BEGIN,
        f"Last run: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit `{commit()}`, "
        f"`make chaos` ({count} invoices per scenario at {rate:g}/s, open loop; "
        f"recovery bound {RECOVERY_BOUND:.0f} s). Result: "
        + ("**every scenario passed**." if all(r.get("ok") for r in results) else "**failures, see below**."),
        "",
        "| scenario | submitted | final | lost | doubled | sent again | recovery s | max e2e s | ok |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        cells = [r.get(k, "") for k in ("submitted", "final", "lost", "doubled", "resent",
                                        "recovery_seconds", "max_e2e_seconds")]  # fmt: skip
        ok = "yes" if r.get("ok") else "**no**"
        lines.append(f"| {r['scenario']} | " + " | ".join(str(c) for c in cells) + f" | {ok} |")
    notes = [f"- {r['scenario']}: {n}" for r in results for n in _notes(r)]
    if notes:
        lines += ["", *notes]
    lines.append(END)
    return "\n".join(lines)


def _notes(result: dict[str, object]) -> list[str]:
    notes = result.get("notes") or []
    return [str(n) for n in notes] if isinstance(notes, list) else [str(notes)]


def write_doc(text: str) -> None:
    path = ROOT / "docs" / "reliability.md"
    doc = path.read_text()
    if BEGIN in doc and END in doc:
        doc = doc[: doc.index(BEGIN)] + text + doc[doc.index(END) + len(END) :]
    else:
        doc = doc.rstrip() + "\n\n" + text + "\n"
    path.write_text(doc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000, help="invoices per scenario")
    parser.add_argument("--rate", type=float, default=50.0, help="submissions per second")
    parser.add_argument("--only", nargs="*", default=[], help="run the scenarios whose name contains one of these")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/reliability.md")
    args = parser.parse_args()
    if not os.environ.get("INGEST_ADDR"):
        print("source .run/env first (make chaos does)", file=sys.stderr)
        return 2
    results = asyncio.run(run(args.count, args.rate, args.only))
    report = ROOT / "chaos-report.json"
    if args.only and report.exists():
        # A partial run replaces its scenarios' rows; the others stay.
        fresh = {r["scenario"]: r for r in results}
        earlier = [r for r in json.loads(report.read_text()) if r["scenario"] not in fresh]
        order = [name for name, _, _ in SCENARIOS]
        results = sorted(
            [*earlier, *results],
            key=lambda r: order.index(str(r["scenario"])) if r["scenario"] in order else len(order),
        )
    report.write_text(json.dumps(results, indent=2) + "\n")
    if not args.no_doc:
        write_doc(table(results, args.count, args.rate))
    failed = [r["scenario"] for r in results if not r.get("ok")]
    print(f"[chaos] {len(results) - len(failed)} of {len(results)} scenarios passed" +
          (f"; failed: {', '.join(map(str, failed))}" if failed else ""))  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
