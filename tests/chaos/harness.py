"""The fault-injection harness: an open-loop load through the running stack
while a fault is injected, then the run checked after the fact.

Each scenario runs `invoicectl bench --mode open` (each submission with an
idempotency key, sent again on a transient refusal as an ERP would, every
acknowledged id written to a file), injects its fault once the load is
under way, waits for the bench to finish, and checks the run with
`invoicectl reconcile --ids-file` (each status transition exactly once in
the history and on the status topic, every invoice at a pipeline outcome).
Everything runs on loopback against the local stack (`make up`); every
process the harness starts it stops, by pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RUN = Path(os.environ.get("STACK_RUN_DIR", ROOT / ".run"))


@dataclass
class Outcome:
    scenario: str
    submitted: int = 0
    final: int = 0
    lost: int = 0
    doubled: int = 0
    resent: int = 0
    recovery_seconds: float = 0.0
    max_e2e_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    problems: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.doubled == 0 and not self.problems and self.final == self.submitted

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "submitted": self.submitted,
            "final": self.final,
            "lost": self.lost,
            "doubled": self.doubled,
            "resent": self.resent,
            "recovery_seconds": round(self.recovery_seconds, 1),
            "max_e2e_seconds": round(self.max_e2e_seconds, 1),
            "ok": self.ok,
            "notes": self.notes,
            "problems": self.problems,
        }


Fault = Callable[["Run"], Awaitable[float]]  # injects, returns the seconds to recover


# --- the stack's processes ----------------------------------------------------


def pid_of(name: str) -> int:
    return int((RUN / "pids" / f"{name}.pid").read_text().strip())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


async def until(condition: Callable[[], bool], what: str, timeout: float) -> float:
    """Poll ``condition`` (bounded); returns the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.1)  # polling a condition, bounded by the timeout
    return time.monotonic() - started


async def stack(command: str, env: dict[str, str] | None = None) -> None:
    """`deploy/local/stack.py COMMAND`: up restarts what is not running and
    waits until every part is ready."""
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "python"), str(ROOT / "deploy" / "local" / "stack.py"), command,
        env=env or dict(os.environ), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"stack.py {command} failed:\n{out.decode(errors='replace')[-2000:]}")


async def hard_kill(name: str) -> int:
    """SIGKILL a part of the stack; returns once it is gone."""
    pid = pid_of(name)
    os.kill(pid, signal.SIGKILL)
    await until(lambda: not alive(pid), f"{name} (pid {pid}) to die", 30)
    return pid


async def kill_and_restart(name: str) -> float:
    started = time.monotonic()
    await hard_kill(name)
    await stack("up")
    return time.monotonic() - started


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def workers_of(pid: int) -> list[int]:
    """The validation worker processes of the validate service ``pid``:
    its live children started by multiprocessing's spawn (not its resource
    tracker)."""
    found = []
    for child in children(pid):
        with contextlib.suppress(OSError):
            command = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
            if b"multiprocessing.spawn" in command and alive(child):
                found.append(child)
    return found


# --- the load -----------------------------------------------------------------


class Run:
    """One bench run in the background, and what it wrote."""

    def __init__(self, name: str, count: int, rate: float, workdir: Path) -> None:
        self.name = name
        self.count = count
        self.rate = rate
        self.ids_file = workdir / f"{name}.ids"
        self.report_file = workdir / f"{name}.json"
        self.log_file = workdir / f"{name}.log"
        self._proc: asyncio.subprocess.Process | None = None
        # Invoices a fault submitted itself, checked with the run's.
        self.extra_ids: list[str] = []
        self.notes: list[str] = []

    async def start(self) -> None:
        self.ids_file.write_text("")
        log = self.log_file.open("wb")
        self._proc = await asyncio.create_subprocess_exec(
            str(BIN / "invoicectl"), "bench", "--mode", "open", "--rate", str(self.rate),
            "--count", str(self.count), "--no-baselines", "--retry-for", "180", "--idle-timeout", "180",
            "--ids-file", str(self.ids_file), "--json", str(self.report_file),
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()

    def acknowledged(self) -> int:
        return sum(1 for line in self.ids_file.read_text().splitlines() if line.strip())

    async def at_least(self, share: float, timeout: float = 300) -> None:
        """Until ``share`` of the invoices are acknowledged: the load is under way."""
        want = int(self.count * share)
        assert self._proc is not None
        proc = self._proc
        await until(lambda: self.acknowledged() >= want or proc.returncode is not None, f"{want} acks", timeout)

    async def finish(self, timeout: float = 900) -> dict[str, Any]:
        assert self._proc is not None
        try:
            await asyncio.wait_for(self._proc.wait(), timeout)
        except TimeoutError:
            self._proc.kill()
            await self._proc.wait()
            raise
        if not self.report_file.exists():
            raise RuntimeError(f"bench {self.name} wrote no report:\n{self.log_file.read_text()[-3000:]}")
        report: dict[str, Any] = json.loads(self.report_file.read_text())
        return report

    async def stop(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()


async def reconcile(ids_file: Path) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "invoicectl"), "reconcile", "--ids-file", str(ids_file),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"reconcile failed: {err.decode(errors='replace')[-2000:]}")
    result: dict[str, Any] = json.loads(out)
    return result


async def scenario(name: str, fault: Fault, *, count: int, rate: float, workdir: Path, at: float = 0.3) -> Outcome:
    """Run the load, inject ``fault`` once ``at`` of it is acknowledged,
    and check the run."""
    run = Run(name, count, rate, workdir)
    outcome = Outcome(name)
    await run.start()
    try:
        await run.at_least(at)
        outcome.recovery_seconds = await fault(run)
        report = await run.finish()
    finally:
        await run.stop()
    outcome.notes += run.notes
    if run.extra_ids:
        with run.ids_file.open("a") as ids:
            ids.writelines(f"{i}\n" for i in run.extra_ids)
    outcome.submitted = int(report["acked"])
    outcome.final = sum(int(v) for v in report["finals"].values())
    outcome.lost = int(report["lost"])
    outcome.resent = int(report.get("retried_submissions", 0))
    outcome.max_e2e_seconds = float(report["e2e_latency_ms"]["max"]) / 1000
    if report["failed_submissions"]:
        outcome.problems["refused"] = [f"{k}: {v}" for k, v in report["failed_submissions"].items()]
    checked = await reconcile(run.ids_file)
    outcome.submitted += len(run.extra_ids)
    outcome.final += len(run.extra_ids)  # each waited for its final status
    for invoice_id, problems in checked["problems"].items():
        # A transition twice in the history, or a history and a status
        # topic that disagree (an event published twice, or never).
        if any("repeats" in p or "differ" in p for p in problems):
            outcome.doubled += 1
        if len(outcome.problems) < 5:
            outcome.problems[invoice_id] = problems
    return outcome


# --- faults -------------------------------------------------------------------


def kill_service(name: str, times: int = 3) -> Fault:
    """SIGKILL ``name`` ``times`` times while the load runs, each time
    restarted by `stack.py up`; the recovery is the slowest restart."""

    async def inject(run: Run) -> float:
        slowest = 0.0
        for i in range(times):
            if i:
                await run.at_least(0.3 + 0.5 * i / times)
            slowest = max(slowest, await kill_and_restart(name))
        return slowest

    return inject


async def kill_a_worker(run: Run) -> float:
    """SIGKILL one validation worker process: the service replaces it."""
    validate = pid_of("validate")
    workers = workers_of(validate)
    assert workers, "validate has no worker processes"
    before = set(workers)
    os.kill(workers[0], signal.SIGKILL)
    # Recovered once a new worker stands beside the survivors.
    return await until(
        lambda: len(set(workers_of(validate)) - before) >= 1 and len(workers_of(validate)) >= len(before),
        "a replacement worker",
        60,
    )


async def rebalance_storm(run: Run) -> float:
    """validate 1 -> 2 -> 1 instances while the load runs."""
    env = {**os.environ, **_service_env("validate"), "GRPC_PORT": str(_free_port()), "METRICS_PORT": "0"}
    log = (RUN / "logs" / "validate-extra.log").open("ab")
    extra = subprocess.Popen(  # noqa: ASYNC220 - started once, then only signalled
        [str(BIN / "python"), "-m", "invoicing_validate"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    log.close()
    started = time.monotonic()
    try:
        await run.at_least(0.6)
    finally:
        extra.send_signal(signal.SIGTERM)
        await until(lambda: extra.poll() is not None, "the second validate instance to stop", 90)
    return time.monotonic() - started


async def restart_postgres(run: Run) -> float:
    started = time.monotonic()
    pid = pid_of("postgres")
    os.kill(pid, signal.SIGINT)  # fast shutdown: sessions are cut
    await until(lambda: not alive(pid), "postgres to stop", 60)
    await stack("up")
    return time.monotonic() - started


def brokers() -> int:
    """How many brokers the local cluster was made with (stack.py)."""
    formatted = RUN / "kafka" / "brokers"
    return int(formatted.read_text()) if formatted.exists() else 1


async def kill_kafka(run: Run) -> float:
    """One broker SIGKILLed. Alone, the pipeline waits for it and goes on
    once it is restarted; with three (KAFKA_BROKERS=3: replication 3,
    min.insync.replicas 2), the load goes on without it, and it is
    restarted once most of the load is through."""
    if brokers() < 3:
        return await kill_and_restart("kafka")
    await hard_kill("kafka-2")
    run.notes.append("3 brokers: kafka-2 killed, restarted after 70% of the load")
    await run.at_least(0.7)
    started = time.monotonic()
    await stack("up")
    return time.monotonic() - started


async def poison(run: Run) -> float:
    """Records that are not pipeline events, on every partition of the
    received and validated topics: each goes to the DLQ, the rest flows."""
    from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]

    from invoicing_common import topics

    producer = AIOKafkaProducer(**admin_kafka().kafka_client_kwargs(), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for topic in (topics.RECEIVED, topics.VALIDATED):
            for partition in sorted(await producer.partitions_for(topic)):
                await producer.send_and_wait(
                    topic, value=b"\xff chaos: not protobuf", key=b"chaos", partition=partition
                )
    finally:
        await producer.stop()
    return 0.0


async def too_large(run: Run) -> float:
    """While the validated topic takes at most 512 KiB, one invoice whose
    validated event is larger: validate dead-letters its received record,
    GetInvoice says it is held; the limit is restored and the letter
    replayed (`invoicectl dlq replay`), and the invoice goes on."""
    from dataclasses import replace

    from invoicing_common import topics
    from invoicing_common.kafka import admin as topic_admin
    from tests.support import get_invoice, submit, unique_invoice

    spec = next(s for s in topic_admin.load() if s.name == topics.VALIDATED)
    small = replace(spec, configs={**spec.configs, "max.message.bytes": str(512 * 1024)})
    status = os.environ["STATUS_ADDR"]
    await topic_admin.apply(admin_kafka(), [small])
    try:
        doc, _ = unique_invoice("ubl-invoice-valid.xml")
        doc = doc.replace(b"</Invoice>", b"<!-- " + b"x" * (1024 * 1024) + b" --></Invoice>")
        reply = await submit(os.environ["INGEST_ADDR"], doc, "chaos-too-large.xml")
        held_after = await _until_async(
            lambda: _held(get_invoice(status, reply.invoice_id)), "the invoice to be held", 120
        )
    finally:
        await topic_admin.apply(admin_kafka(), [spec])
    view = await get_invoice(status, reply.invoice_id)
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "invoicectl"), "dlq", "replay", "--id", view.hold.dead_letter, "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"dlq replay failed: {err.decode(errors='replace')}")
    await _until_async(
        lambda: _final_and_free(get_invoice(status, reply.invoice_id)), "the replayed invoice to finish", 180
    )
    run.extra_ids.append(reply.invoice_id)
    run.notes.append(
        f"the too-large invoice was held {held_after:.1f}s after submission, final "
        f"{time.monotonic() - started:.1f}s after its replay"
    )
    return time.monotonic() - started


async def _held(view: Awaitable[Any]) -> bool:
    import grpc

    try:
        return bool((await view).HasField("hold"))
    except grpc.aio.AioRpcError as exc:
        # The status service records an invoice when it reads its received
        # event, a moment after ingest's answer.
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return False
        raise


async def _final_and_free(view: Awaitable[Any]) -> bool:
    from tests.support import FINAL

    v = await view
    return v.status_code in FINAL and not v.HasField("hold")


async def _until_async(condition: Callable[[], Awaitable[bool]], what: str, timeout: float) -> float:
    started = time.monotonic()
    while not await condition():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.2)  # polling a condition, bounded by the timeout
    return time.monotonic() - started


def admin_kafka() -> Any:
    from invoicing_common.settings import KafkaClientSettings

    return KafkaClientSettings(
        kafka_sasl_username=os.environ["KAFKA_ADMIN_USERNAME"],
        kafka_sasl_password_file=Path(os.environ["KAFKA_ADMIN_PASSWORD_FILE"]),
    )


class LatencyProxy:
    """A TCP proxy on loopback that holds every chunk ``delay`` seconds in
    each direction: a slow network to the database."""

    def __init__(self, target_port: int, delay: float) -> None:
        self._target = target_port
        self._delay = delay
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self.port = 0

    async def __aenter__(self) -> LatencyProxy:
        self._server = await asyncio.start_server(self._connect, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        await self._server.wait_closed()

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target)
        except OSError:
            writer.close()
            return
        for pipe in (self._pipe(reader, up_writer), self._pipe(up_reader, writer)):
            task = asyncio.ensure_future(pipe)
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                await asyncio.sleep(self._delay)  # the latency this proxy exists to add
                writer.write(chunk)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def database_latency(delay: float) -> AsyncIterator[None]:
    """The four services restarted to reach PostgreSQL through a proxy that
    adds ``delay`` each way; restored after."""
    pg_port = int(os.environ.get("PG_PORT", "15432"))
    async with LatencyProxy(pg_port, delay) as proxy:
        await stack("restart-services", {**os.environ, "STACK_SERVICE_DATABASE_PORT": str(proxy.port)})
        try:
            yield
        finally:
            await stack("restart-services")


def _service_env(name: str) -> dict[str, str]:
    lines = (RUN / "services" / f"{name}.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def workdir() -> AsyncIterator[Path]:
    with tempfile.TemporaryDirectory(prefix="chaos-") as d:
        yield Path(d)
