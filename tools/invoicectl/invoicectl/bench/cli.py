"""`invoicectl bench`: load the running pipeline and report against same-run ceilings."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import grpc
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from invoicectl.accounts import Account, AccountError, AccountsAdmin
from invoicectl.bench import cpu
from invoicectl.bench.baselines import grpc_baseline, kafka_baseline, validation_baseline
from invoicectl.bench.calibration import DEFAULT_FRACTION, choose_rate, parse_rate, split_count
from invoicectl.bench.generator import BenchDocument, Generator, Seller, mix
from invoicectl.bench.report import Baselines, BenchReport, Calibration, PipelineFigures, ValidationBaseline, render
from invoicectl.bench.runner import Authorize, BenchError, Metadata, Mode, Tick, run_pipeline
from invoicectl.bench.speed import SpeedProbe, probe
from invoicectl.config import Endpoints, client_config, token_source
from invoicing_common.auth.client import TokenError, TokenSource
from invoicing_common.lifecycle import use_event_loop

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class _RateColumn(ProgressColumn):
    """Items per second, worked out when the display refreshes (10 times a
    second). Worked out at every tick, it was most of the bench client's
    CPU during the measured window (rich sums up to 1000 recent samples on
    each call), CPU that the pipeline under test shares."""

    def render(self, task: Task) -> Text:
        speed = task.speed
        return Text(f"{speed:8.1f}/s" if speed else "")


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
        _RateColumn(), TimeElapsedColumn(),
        console=err, transient=False,
    )  # fmt: skip


@contextmanager
def _step(progress: Progress, description: str, total: int) -> Iterator[Tick]:
    task: TaskID = progress.add_task(description, total=total)

    def tick() -> None:
        progress.advance(task)

    yield tick
    progress.update(task, completed=progress.tasks[task].completed)


def _generate(generator: Generator, count: int, invalid_share: float, progress: Progress) -> list[BenchDocument]:
    documents: list[BenchDocument] = []
    with _step(progress, "generating documents", count) as tick:
        for document in generator.documents(count, invalid_share):
            documents.append(document)
            tick()
    return documents


@contextmanager
def _ids_writer(path: Path | None) -> Iterator[Callable[[str], None]]:
    """Each acknowledged id, written and flushed as it comes: a run that is
    interrupted still leaves the ids `invoicectl reconcile` needs."""
    if path is None:
        yield lambda _id: None
        return
    try:
        handle = path.open("w")
    except OSError as exc:
        raise BenchError(f"cannot write {path}: {exc.strerror}") from exc
    with handle:

        def write(invoice_id: str) -> None:
            handle.write(invoice_id + "\n")
            handle.flush()

        yield write


def _cpu_window() -> cpu.Window:
    # The bench's own process gets a line of its own: it shares the cores
    # with the stack, but its CPU is no part of the pipeline's.
    return cpu.Window(cpu.stack_run_dir(os.environ, Path(".run")), {os.getpid(): cpu.LOAD_GENERATOR})


class SellerAccounts:
    """One supplier account per seller of the run, made in the identity
    provider before the load and deleted after it: the pipeline sees many
    tenants, each authenticated with its own token, as in production."""

    def __init__(self, run_id: str) -> None:
        config = client_config()
        self._config = config
        self._admin = AccountsAdmin(config.token_url, token_source(), config.ca_file)
        self._run_id = run_id
        self._accounts: list[Account] = []
        self._tokens: dict[str, TokenSource] = {}

    def create(self, sellers: list[Seller], tick: Tick) -> None:
        for number, seller in enumerate(sellers):
            account = self._admin.create(["supplier"], [seller.siren], name=f"bench-{self._run_id}-{number:03d}")
            self._accounts.append(account)
            source = TokenSource(self._config.token_url, account.client_id, account.client_secret, self._config.ca_file)
            source.token()  # fetched now, not during the measured window
            self._tokens[seller.siren] = source
            tick()

    @property
    def count(self) -> int:
        return len(self._accounts)

    def delete(self, tick: Tick) -> None:
        for account in self._accounts:
            self._admin.delete(account.client_id)
            tick()
        for source in self._tokens.values():
            source.close()

    def authorize(self, document: BenchDocument) -> Metadata:
        # Cached by the source: renewed (one blocking fetch) only when
        # the token nears its end, every few minutes of a long run.
        return (("authorization", f"Bearer {self._tokens[document.seller.siren].token()}"),)


def bench(
    count: Annotated[
        int, typer.Option(min=1, help="Distinct invoices to submit (with --rate auto: calibration and open loop).")
    ] = 1000,
    mode: Annotated[Mode, typer.Option(help="closed: fixed concurrency; open: fixed arrival rate.")] = Mode.CLOSED,
    concurrency: Annotated[
        int, typer.Option(min=1, help="Calls in flight (closed loop, and the --rate auto calibration).")
    ] = 32,
    rate: Annotated[
        str,
        typer.Option(
            metavar="R|auto",
            help="Open loop: submissions per second (at least 0.1), or 'auto': a closed-loop run measures "
            "the capacity first and the open loop runs at --fraction of it.",
        ),
    ] = "50",
    fraction: Annotated[
        float | None,
        typer.Option(
            min=0.01, help=f"With --rate auto: the open loop's share of the capacity (default {DEFAULT_FRACTION})."
        ),
    ] = None,
    calibrate_count: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="With --rate auto: invoices (of --count) for the closed-loop calibration "
            "(default: a third of --count, at most 1000).",
        ),
    ] = None,
    invalid_share: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of invalid invoices.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of the document mix and sellers.")] = 1,
    idle_timeout: Annotated[
        float, typer.Option(min=1.0, help="Give up waiting for final statuses after this many seconds without one.")
    ] = 120.0,
    baselines: Annotated[bool, typer.Option(help="Also measure the gRPC, Kafka and validation ceilings.")] = True,
    baseline_count: Annotated[
        int, typer.Option(min=1, help="Documents per baseline (default: all, at most 2000).")
    ] = 2000,
    validation_workers: Annotated[
        int, typer.Option(min=1, help="Processes of the validation baseline (default: one per core).")
    ] = os.cpu_count() or 1,
    partitions: Annotated[int, typer.Option(min=1, help="Partitions of the Kafka baseline's topic.")] = 6,
    json_file: Annotated[Path | None, typer.Option("--json", help="Write the report to this file.")] = None,
    ids_file: Annotated[
        Path | None,
        typer.Option("--ids-file", help="Write each acknowledged invoice id to this file, one per line, as it comes."),
    ] = None,
    retry_for: Annotated[
        float,
        typer.Option(min=0.0, help="Send a submission refused for a transient reason again, for up to this long."),
    ] = 0.0,
) -> None:
    """Load the running pipeline with generated invoices; report throughput,
    latencies, losses and the same-run ceilings. Exit 1 if an invoice is lost
    or refused, 2 if the stack cannot be reached."""
    try:
        per_second = parse_rate(rate)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--rate") from None
    auto = per_second is None
    if auto and mode is not Mode.OPEN:
        raise typer.BadParameter("'auto' applies to the open loop: add --mode open", param_hint="--rate")
    if not auto and (fraction is not None or calibrate_count is not None):
        raise typer.BadParameter("--fraction and --calibrate-count go with --rate auto", param_hint="--rate")
    calibrate, measured = 0, count
    if auto:
        try:
            calibrate, measured = split_count(count, calibrate_count)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--calibrate-count") from None
    share = DEFAULT_FRACTION if fraction is None else fraction

    endpoints = Endpoints.from_env()
    run_id = uuid.uuid4().hex[:8]
    generator = Generator(run_id, seed=seed)

    accounts = SellerAccounts(run_id)
    # Documents take sellers in turn: a short run uses only the first ones.
    sellers = generator.sellers[:count]

    async def run() -> BenchReport:
        with _progress() as progress:
            try:
                with _step(progress, "accounts (one per seller)", len(sellers)) as tick:
                    await asyncio.to_thread(accounts.create, sellers, tick)
                return await measure(progress, accounts.authorize)
            finally:
                # Also those made before a failure: the run leaves no account behind.
                with _step(progress, "accounts removed", accounts.count) as tick:
                    await asyncio.to_thread(accounts.delete, tick)

    async def calibration_phase(
        progress: Progress, authorize: Authorize, documents: list[BenchDocument], on_id: Callable[[str], None]
    ) -> Calibration:
        window = _cpu_window()
        with (
            _step(progress, "calibration: submitted", len(documents)) as on_ack,
            _step(progress, "calibration: final status", len(documents)) as on_final,
        ):
            window.start()
            closed = await run_pipeline(
                endpoints,
                documents,
                mode=Mode.CLOSED,
                concurrency=concurrency,
                per_second=0.0,
                authorize=authorize,
                idle_timeout=idle_timeout,
                on_ack=on_ack,
                on_final=on_final,
                run_id=run_id,
                retry_for=retry_for,
                on_id=on_id,
                # Its latencies are not what the run is for; its capacity is.
                hops=False,
                on_settled=window.stop,
            )
        try:
            calibration = choose_rate(closed, share)
        except ValueError as exc:
            raise BenchError(str(exc)) from exc
        calibration.cpu = window.use(sum(closed.finals.values()))
        return calibration

    async def measure(progress: Progress, authorize: Authorize) -> BenchReport:
        documents = _generate(generator, count, invalid_share, progress)
        # Fresh documents for each phase: an invoice seen twice would be a
        # duplicate (REJ_UNI), not load.
        calibration_documents, documents = (documents[:calibrate], documents[calibrate:]) if auto else ([], documents)
        subset = documents[: min(baseline_count, len(documents))]
        chunks = -(-len(subset) // 20)
        validation_runs: list[ValidationBaseline] = []
        if baselines:
            # Once before the pipeline phase and once after: the machine
            # drifts, and the mean of both is the ceiling.
            with _step(progress, "ceiling: validation, before", chunks) as tick:
                validation_runs.append(await asyncio.to_thread(validation_baseline, subset, validation_workers, tick))
        calibration: Calibration | None = None
        window = _cpu_window()
        # The machine's speed of the hour, read while the stack is quiet.
        speed_before = probe()
        with _ids_writer(ids_file) as on_id:
            if auto:
                calibration = await calibration_phase(progress, authorize, calibration_documents, on_id)
            with (
                _step(progress, "submitted (acknowledged)", measured) as on_ack,
                _step(progress, "final status", measured) as on_final,
            ):
                window.start()
                pipeline = await run_pipeline(
                    endpoints,
                    documents,
                    mode=mode,
                    concurrency=concurrency,
                    per_second=calibration.target_rate if calibration else (per_second or 0.0),
                    authorize=authorize,
                    idle_timeout=idle_timeout,
                    on_ack=on_ack,
                    on_final=on_final,
                    run_id=run_id,
                    retry_for=retry_for,
                    on_id=on_id,
                    # Before the per-hop reading: that is no part of the phase.
                    on_settled=window.stop,
                )
        phase_cpu = window.use(sum(pipeline.finals.values()))
        speed = SpeedProbe(speed_before, probe())
        ceilings = Baselines()
        if baselines:
            with _step(progress, "ceiling: bare gRPC", len(subset)) as tick:
                ceilings.ingest_grpc = await grpc_baseline(subset, concurrency, authorize, tick)
            with _step(progress, "ceiling: Kafka", len(subset)) as tick:
                ceilings.kafka = await kafka_baseline(endpoints.kafka, subset, partitions, 1000, tick)
            with _step(progress, "ceiling: validation, after", chunks) as tick:
                validation_runs.append(await asyncio.to_thread(validation_baseline, subset, validation_workers, tick))
            ceilings.validation = ValidationBaseline.combined(validation_runs)
        return BenchReport(
            run_id=run_id,
            pipeline=pipeline,
            baselines=ceilings,
            mix=mix(documents),
            calibration=calibration,
            cpu=phase_cpu,
            speed=speed,
        )

    # The services' loop (uvloop unless EVENT_LOOP=asyncio): the load
    # generator shares the stack's cores, and costs them less on it.
    use_event_loop(os.environ.get("EVENT_LOOP", "uvloop"))
    try:
        report = asyncio.run(run())
    except (BenchError, AccountError, TokenError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    except grpc.aio.AioRpcError as exc:
        err.print(f"[red]error:[/red] {exc.code().name}: {exc.details()}")
        raise typer.Exit(2) from exc
    render(report, out)
    if json_file is not None:
        try:
            json_file.write_text(json.dumps(report.as_json(), indent=2, allow_nan=False) + "\n")
        except (OSError, ValueError) as exc:
            err.print(f"[red]error:[/red] cannot write {json_file}: {exc}")
            raise typer.Exit(2) from exc
        err.print(f"report written to {json_file}")
    phases: list[PipelineFigures] = [report.pipeline]
    if report.calibration:
        phases.append(report.calibration.run)
    lost = sum(p.lost for p in phases)
    refused = sum(sum(p.failed_submissions.values()) for p in phases)
    if lost or refused:
        err.print(f"[red]{lost} invoice(s) lost, {refused} refused[/red]")
        raise typer.Exit(1)
