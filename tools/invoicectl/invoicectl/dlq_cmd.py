"""invoicectl dlq: list, show and replay dead letters.

Exit codes: 0 done; 1 the letter asked for does not exist, or a replay
failed; 2 usage or connection error.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from invoicectl import dlq
from invoicectl.config import Endpoints, replay_kafka_settings
from invoicing_common.auth.client import ConfigError

dlq_app = typer.Typer(
    help="Dead letters (invoicing.invoice.dlq.v1): list, show, put back on their source topic.",
    no_args_is_help=True,
    add_completion=False,
)
out = Console(highlight=False, soft_wrap=True, markup=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _letters() -> list[dlq.Letter]:
    try:
        return asyncio.run(dlq.letters(Endpoints.from_env().kafka))
    except (KafkaError, OSError, RuntimeError) as exc:
        err.print(f"[red]error:[/red] reading the DLQ: {type(exc).__name__}: {exc}")
        raise typer.Exit(2) from exc


@dlq_app.command("list")
def list_letters(
    as_json: JsonOpt = False,
    pending: Annotated[bool, typer.Option("--pending", help="Only letters not replayed yet.")] = False,
) -> None:
    """Every dead letter still on the DLQ, oldest first."""
    found = [item for item in _letters() if not (pending and item.replay is not None)]
    if as_json:
        out.print(json.dumps([item.summary_json() for item in found], indent=2))
        return
    table = Table("id", "failed at", "group", "source", "key", "error", "replayed")
    for item in found:
        s = item.summary_json()
        table.add_row(
            s["id"], s["failed_at"] or "", s["consumer_group"],
            f"{s['source_topic']}/{s['source_partition']}@{s['source_offset']}",
            s["key"], s["error_type"], s["replayed_at"] or "",
        )  # fmt: skip
    out.print(table)
    out.print(f"{len(found)} dead letter(s), {sum(1 for i in found if i.replay is None)} not replayed")


@dlq_app.command("show")
def show_letter(letter_id: Annotated[str, typer.Argument(help="The letter's id, <partition>:<offset>.")],
                as_json: JsonOpt = False) -> None:  # fmt: skip
    """One dead letter in full: source, error, headers, replay."""
    found = {item.position: item for item in _letters()}
    if letter_id not in found:
        err.print(f"[red]error:[/red] id: no dead letter {letter_id} on the DLQ (ids are <partition>:<offset>)")
        raise typer.Exit(1)
    detail = found[letter_id].detail_json()
    if as_json:
        out.print(json.dumps(detail, indent=2))
        return
    for name, value in detail.items():
        out.print(f"{name:>17}  {value}")


@dlq_app.command("replay")
def replay_letters(
    ids: Annotated[list[str] | None, typer.Option("--id", help="A letter to replay (repeatable).")] = None,
    replay_all: Annotated[bool, typer.Option("--all", help="Every letter not replayed yet.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be replayed, change nothing.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Put dead letters back on their source topic, once each."""
    if bool(ids) == replay_all:
        err.print("[red]error:[/red] give --id ID (one or more) or --all")
        raise typer.Exit(2)
    found = _letters()
    if replay_all:
        chosen = [item for item in found if item.replay is None]
    else:
        by_id = {item.position: item for item in found}
        unknown = [i for i in ids or [] if i not in by_id]
        if unknown:
            err.print(f"[red]error:[/red] id: no dead letter {', '.join(unknown)} on the DLQ")
            raise typer.Exit(1)
        chosen = [by_id[i] for i in ids or []]
    try:
        kafka = replay_kafka_settings()
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    with Progress(
        TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), console=err, transient=True,
        disable=len(chosen) < 20,
    ) as progress:  # fmt: skip
        task = progress.add_task("replay", total=len(chosen))
        try:
            outcomes = asyncio.run(
                dlq.replay(
                    kafka, chosen, dry_run=dry_run,
                    progress=lambda n: progress.advance(task, n),
                )
            )  # fmt: skip
        except (KafkaError, OSError) as exc:
            err.print(f"[red]error:[/red] replay stopped: {type(exc).__name__}: {exc}; run it again to go on")
            raise typer.Exit(1) from exc
    if as_json:
        out.print(json.dumps([o.as_json() for o in outcomes], indent=2))
        return
    for o in outcomes:
        where = f" -> {o.letter.letter.source_topic}/{o.partition}@{o.offset}" if o.offset is not None else ""
        out.print(f"{o.letter.position}  {o.action}{where}")
    replayed = sum(1 for o in outcomes if o.action == "replayed")
    out.print(f"{replayed} replayed, {len(outcomes) - replayed} not (dry run)" if dry_run else f"{replayed} replayed")
