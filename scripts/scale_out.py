"""The scale-out curve: end-to-end throughput and latency with validate run
as 1, 2 and 4 containers of --cpus 0.5 each, at 6 and then 12 partitions,
under the same open-loop load (docs/performance.md, "Scale-out").

    make up && make images
    .venv/bin/python scripts/scale_out.py [--instances 1,2,4] [--partitions 6,12]
        [--cpus 0.5] [--rate 150] [--count 3000] [--json scale-out.json]

ingest, route and status stay the stack's processes; its validate process
is stopped, and each configuration starts its own validate containers from
`localhost/invoicing:latest` (host network, an ephemeral gRPC port, a health
port each, one worker process each: a 0.5-CPU container has no second core
for a second worker). Partitions only grow (Kafka cannot shrink a topic), so
the list must rise; a topic that already has more stops the run. The load is
the same for every configuration: `invoicectl bench --mode open --rate R`,
above what one container can do, so that each figure is the configuration's
capacity and its latency under that load.

At the end the containers are removed and the stack's validate process is
started again (`stack.py up`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from scripts.cpu_by_service import diff, snapshot  # noqa: E402
from scripts.deploy_local import (  # noqa: E402
    RUN,
    container_mounts,
    container_settings,
    health,
    prepare_files,
    read_env_file_exports,
)
from scripts.images import podman_env  # noqa: E402

IMAGE = os.environ.get("INVOICING_IMAGE", "localhost/invoicing:latest")
HEALTH_PORT_BASE = 17300
SERVING_TIMEOUT_SECONDS = 120.0
WARMUP_COUNT = 300


def say(message: str) -> None:
    print(f"[scale-out] {message}", flush=True)


def stack_env() -> dict[str, str]:
    return {**os.environ, **read_env_file_exports(RUN / "env")}


def invoicectl(*args: str) -> str:
    return subprocess.run(
        [str(ROOT / ".venv" / "bin" / "invoicectl"), *args], env=stack_env(), check=True, capture_output=True, text=True
    ).stdout


def set_partitions(partitions: int) -> None:
    steps = json.loads(invoicectl("topics", "apply", "--partitions", str(partitions), "--as-admin", "--json"))
    refused = [s for s in steps if s["action"] == "cannot change"]
    if refused:
        raise SystemExit(
            f"cannot set {partitions} partitions: {refused} (start from a new stack: make down, rm -rf .run)"
        )
    say(
        f"{partitions} partitions: "
        + ", ".join(f"{s['topic']} {s['action']}" for s in steps if s["action"] != "unchanged")
    )


def start_validate(index: int, cpus: float, files: Path) -> str:
    name = f"invoicing-scale-validate-{index}"
    env = {
        **container_settings("validate"),
        "GRPC_PORT": "0",
        "METRICS_PORT": "0",
        "GRPC_HEALTH_PORT": str(HEALTH_PORT_BASE + index),
        "VALIDATE_WORKERS": "1",
    }
    argv = [
        "podman", "run", "--detach", "--replace", "--name", name, "--cpus", str(cpus),
        "--user", "10001:10001", "--read-only", "--tmpfs", "/tmp:size=64m", "--cap-drop", "ALL",  # noqa: S108
        "--security-opt", "no-new-privileges",
        *(arg for host, inside in container_mounts(files, "validate") for arg in ("-v", f"{host}:{inside}:ro")),
        *(arg for key, value in env.items() for arg in ("-e", f"{key}={value}")),
        IMAGE, "python", "-m", "invoicing_validate",
    ]  # fmt: skip
    subprocess.run(argv, env=podman_env(), check=True, stdout=subprocess.DEVNULL)
    return name


def remove(names: list[str]) -> None:
    if names:
        subprocess.run(["podman", "rm", "--force", "--ignore", "--time", "45", *names], env=podman_env(),
                       check=True, stdout=subprocess.DEVNULL)  # fmt: skip


def wait_serving(count: int) -> None:
    deadline = time.monotonic() + SERVING_TIMEOUT_SECONDS
    pending = {HEALTH_PORT_BASE + i for i in range(count)}
    while pending:
        pending = {port for port in pending if health(port) != "SERVING"}
        if pending and time.monotonic() > deadline:
            raise SystemExit(f"validate containers not SERVING after {SERVING_TIMEOUT_SECONDS:.0f} s: ports {pending}")
        if pending:
            time.sleep(0.5)


def bench(args: list[str]) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        invoicectl("bench", *args, "--no-baselines", "--json", out.name)
        return dict(json.loads(Path(out.name).read_text()))


def cpu_seconds(names: list[str]) -> float:
    """CPU seconds the containers have used (cgroup v1 cpuacct or v2 cpu.stat)."""
    total = 0.0
    for name in names:
        usage = subprocess.run(
            ["podman", "exec", name, "sh", "-c",
             "cat /sys/fs/cgroup/cpuacct/cpuacct.usage 2>/dev/null || grep usage_usec /sys/fs/cgroup/cpu.stat"],
            env=podman_env(), capture_output=True, text=True,
        ).stdout.split()  # fmt: skip
        if usage and usage[0] == "usage_usec":
            total += int(usage[1]) / 1e6
        elif usage:
            total += int(usage[0]) / 1e9
    return total


def host_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far (/proc/stat)."""
    fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    ticks = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - idle) / ticks, sum(fields) / ticks


def measure(instances: int, partitions: int, args: argparse.Namespace, files: Path) -> dict[str, Any]:
    names = [start_validate(i, args.cpus, files) for i in range(instances)]
    try:
        wait_serving(instances)
        # Joins the group and warms every worker before the measured run.
        bench(["--count", str(WARMUP_COUNT), "--concurrency", "16", "--seed", str(partitions * 10 + instances)])
        before, processes, machine = cpu_seconds(names), snapshot(), host_busy()
        report = bench(["--mode", "open", "--rate", str(args.rate), "--count", str(args.count),
                        "--seed", str(1000 + partitions * 10 + instances)])  # fmt: skip
        used = cpu_seconds(names) - before
        by_process = diff(processes, snapshot())
        busy, total = (after - first for after, first in zip(host_busy(), machine, strict=True))
    finally:
        remove(names)
    e2e = report["e2e_latency_ms"]
    row = {
        "validate_containers": instances,
        "cpus_each": args.cpus,
        "partitions": partitions,
        "offered_per_s": args.rate,
        "count": args.count,
        "e2e_invoices_per_s": report["e2e_invoices_per_s"],
        "e2e_invoices_per_s_steady": report["e2e_invoices_per_s_steady"],
        "e2e_p50_ms": e2e["p50"],
        "e2e_p99_ms": e2e["p99"],
        "lost": report["lost"],
        "validate_cpu_seconds": round(used, 1),
        "validate_cpu_ms_per_invoice": round(1000 * used / args.count, 2),
        # How busy the whole machine was over the measured run (1.0: every core).
        "machine_busy_share": round(busy / total, 3) if total else None,
        # CPU ms per invoice of each stack process over the run (the
        # containers' validate processes appear by command name).
        "cpu_ms_per_invoice": {name: round(1000 * secs / args.count, 2) for name, secs in by_process if secs > 0.05},
    }
    say(json.dumps(row))
    return row


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", default="1,2,4")
    parser.add_argument("--partitions", default="6,12")
    parser.add_argument("--cpus", type=float, default=0.5)
    parser.add_argument("--rate", type=float, default=150.0)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    instances = [int(x) for x in args.instances.split(",")]
    partitions = [int(x) for x in args.partitions.split(",")]
    if partitions != sorted(partitions):
        raise SystemExit("--partitions must rise: Kafka adds partitions, it never removes them")
    if not (RUN / "env").is_file():
        raise SystemExit("the stack is not up: make up")
    subprocess.run([sys.executable, str(ROOT / "deploy" / "local" / "stack.py"), "stop", "validate"], check=True)
    files = prepare_files()
    rows: list[dict[str, Any]] = []
    try:
        for count in partitions:
            set_partitions(count)
            rows.extend(measure(n, count, args, files) for n in instances)
    finally:
        subprocess.run([sys.executable, str(ROOT / "deploy" / "local" / "stack.py"), "up"], check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
    print(f"{'partitions':>10} {'validate':>8} {'e2e/s':>7} {'steady/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'lost':>4} {'validate ms/inv':>15} {'machine busy':>12}")  # fmt: skip
    for r in rows:
        print(f"{r['partitions']:>10} {r['validate_containers']:>8} {r['e2e_invoices_per_s']:>7.1f} "
              f"{r['e2e_invoices_per_s_steady']:>8.1f} {r['e2e_p50_ms']:>8.0f} {r['e2e_p99_ms']:>8.0f} "
              f"{r['lost']:>4} {r['validate_cpu_ms_per_invoice']:>15.2f} {r['machine_busy_share']:>12.0%}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
