"""The requests the Kafka brokers served while a command ran, per invoice,
by client and by API (produce, fetch, offset commit...), with the time the
brokers' request threads spent on each kind (``localTimeMs``).

    . .run/env
    .venv/bin/python scripts/kafka_requests.py -- \\
        invoicectl bench --mode open --rate 50 --count 1200 --no-baselines --seed 7

The broker's CPU per invoice follows the load and the hour; its requests
per invoice do not, so this is how to see whether a change to a client
(a fetch wait, a linger, a batch) gave the brokers less to do. Each broker's
request log (``kafka.request.logger``) is set to DEBUG through the Admin
API (Kafka's own ``ConfigCommand``, with the admin account of
``.run/kafka/admin.properties``) for the command's run and set back to
WARN after it, whatever happens. The log costs the brokers CPU while it is
on: count with it, do not time with it. Invoices are counted as the rows
``status.invoices`` gained (``--invoices N`` overrides). Needs the local
stack (``make up``): its pid and log files under ``.run`` (or ``$STACK_RUN_DIR``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from invoicectl.bench.cpu import stack_run_dir
from invoicectl.bench.wrapping import parse_with_command

ROOT = Path(__file__).resolve().parent.parent
RUN = stack_run_dir(os.environ, ROOT / ".run")
_MARK = "Completed request:"
_TAIL = " (kafka.request.logger)"
# The client id Kafka's Java admin client (ConfigCommand) takes by default.
_OWN_CLIENT = "adminclient-"


@dataclass(frozen=True)
class Broker:
    node_id: int
    pid: int
    log: Path


def brokers() -> list[Broker]:
    """The local cluster's running nodes, from their pid files (``kafka``,
    ``kafka-2``...)."""
    found = []
    for pid_file in sorted((RUN / "pids").glob("kafka*.pid")):
        name = pid_file.stem
        number = 1 if name == "kafka" else int(name.rsplit("-", 1)[1])
        found.append(Broker(number, int(pid_file.read_text()), RUN / "logs" / f"{name}.log"))
    if not found:
        raise SystemExit(f"no Kafka node is running ({RUN / 'pids'}/kafka*.pid): `make up` first")
    return found


def _classpath(pid: int) -> str:
    """The jars the running broker was started with."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return argv[argv.index(b"-cp") + 1].decode()


def _bootstrap(admin: Path) -> str:
    """The cluster's address, as the stack wrote it for its admin account."""
    for line in admin.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "bootstrap.servers":
            return value.strip()
    raise SystemExit(f"no bootstrap.servers in {admin}")


def set_request_log(broker: Broker, level: str) -> None:
    admin = RUN / "kafka" / "admin.properties"
    subprocess.run(
        ["java", "-cp", _classpath(broker.pid), "org.apache.kafka.tools.ConfigCommand",
         "--bootstrap-server", _bootstrap(admin), "--command-config", str(admin),
         "--entity-type", "broker-loggers", "--entity-name", str(broker.node_id),
         "--alter", "--add-config", f"kafka.request.logger={level}"],
        check=True, capture_output=True,
    )  # fmt: skip


def requests(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The request log's entries among a broker's log lines."""
    for line in lines:
        start = line.find(_MARK)
        if start < 0:
            continue
        end = line.rfind(_TAIL)
        try:
            yield json.loads(line[start + len(_MARK) : end if end > 0 else None])
        except json.JSONDecodeError:
            continue  # a line cut by the log's rotation or the window's edge


@dataclass
class Tally:
    count: Counter[tuple[str, str]]
    local_ms: defaultdict[tuple[str, str], float]

    @classmethod
    def of(cls, entries: Iterator[dict[str, Any]]) -> Tally:
        tally = cls(Counter(), defaultdict(float))
        for entry in entries:
            header = entry.get("requestHeader", {})
            if str(header.get("clientId")).startswith(_OWN_CLIENT):
                continue  # this script's own switch back to WARN
            key = (str(header.get("clientId")), str(header.get("requestApiKeyName")))
            tally.count[key] += 1
            tally.local_ms[key] += float(entry.get("localTimeMs", 0.0))
        return tally

    def report(self, invoices: int) -> dict[str, Any]:
        per = max(invoices, 1)
        by_api: Counter[str] = Counter()
        local_by_api: defaultdict[str, float] = defaultdict(float)
        for (_, api), n in self.count.items():
            by_api[api] += n
        for (_, api), ms in self.local_ms.items():
            local_by_api[api] += ms
        return {
            "invoices": invoices,
            "requests_per_invoice": round(sum(self.count.values()) / per, 2),
            "by_api": {
                api: {"per_invoice": round(n / per, 2), "local_ms_per_invoice": round(local_by_api[api] / per, 3)}
                for api, n in by_api.most_common()
            },
            "by_client": {f"{client} {api}": round(n / per, 2) for (client, api), n in self.count.most_common()},
        }


async def _invoices() -> int:
    conn = await asyncpg.connect(os.environ["DATABASE_URL"])
    try:
        return int(await conn.fetchval("SELECT count(*) FROM status.invoices"))
    finally:
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--invoices", type=int, help="divide by this instead of the invoices the run added")
    args = parse_with_command(parser)
    nodes = brokers()
    before = None if args.invoices else asyncio.run(_invoices())
    offsets = {}
    try:
        for broker in nodes:
            set_request_log(broker, "DEBUG")
            offsets[broker.node_id] = broker.log.stat().st_size
        rc = subprocess.call(args.command)
    finally:
        for broker in nodes:
            set_request_log(broker, "WARN")
    entries: list[dict[str, Any]] = []
    for broker in nodes:
        with broker.log.open("rb") as log:
            log.seek(offsets[broker.node_id])
            text = log.read().decode(errors="replace")
        entries.extend(requests(iter(text.splitlines())))
    invoices = args.invoices if args.invoices else asyncio.run(_invoices()) - (before or 0)
    print(json.dumps(Tally.of(iter(entries)).report(invoices), indent=2))
    return rc


if __name__ == "__main__":
    sys.exit(main())
