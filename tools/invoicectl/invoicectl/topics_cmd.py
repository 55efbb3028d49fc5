"""invoicectl topics: make a Kafka cluster's topics match deploy/kafka/topics.toml.

Exit codes: 0 the cluster matches (or was made to); 1 `check` found a
difference, or something cannot be changed in place; 2 usage, file or
connection error.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Annotated

import typer
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]
from rich.console import Console

from invoicing_common.kafka import admin as topic_admin
from invoicing_common.settings import KafkaClientSettings

topics_app = typer.Typer(
    help="Provision the platform's Kafka topics (partitions, replication, retention) from a file.",
    no_args_is_help=True,
    add_completion=False,
)
out = Console(highlight=False, soft_wrap=True, markup=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)

FileOpt = Annotated[Path, typer.Option("--file", help="The topics file.")]
PartitionsOpt = Annotated[int | None, typer.Option(min=1, help="Partitions (instead of the file's default).")]
ReplicationOpt = Annotated[int | None, typer.Option(min=1, help="Replication factor (instead of the default).")]
InsyncOpt = Annotated[int | None, typer.Option(min=1, help="min.insync.replicas (instead of the default).")]
AdminOpt = Annotated[
    bool, typer.Option("--as-admin", help="Authenticate as KAFKA_ADMIN_USERNAME / KAFKA_ADMIN_PASSWORD_FILE.")
]


def _kafka(as_admin: bool) -> KafkaClientSettings:
    if not as_admin:
        return KafkaClientSettings()
    missing = [v for v in ("KAFKA_ADMIN_USERNAME", "KAFKA_ADMIN_PASSWORD_FILE") if not os.environ.get(v)]
    if missing:
        err.print(f"[red]error:[/red] --as-admin needs {', '.join(missing)}")
        raise typer.Exit(2)
    return KafkaClientSettings(
        kafka_sasl_username=os.environ["KAFKA_ADMIN_USERNAME"],
        kafka_sasl_password_file=Path(os.environ["KAFKA_ADMIN_PASSWORD_FILE"]),
    )


def _run(dry_run: bool, file: Path, partitions: int | None, replication: int | None, insync: int | None,
         as_admin: bool, as_json: bool) -> list[topic_admin.Step]:  # fmt: skip
    try:
        specs = topic_admin.load(
            file, partitions=partitions, replication_factor=replication, min_insync_replicas=insync
        )
        steps = asyncio.run(topic_admin.apply(_kafka(as_admin), specs, dry_run=dry_run))
    except topic_admin.TopicFileError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    except (KafkaError, OSError, RuntimeError) as exc:
        err.print(f"[red]error:[/red] {type(exc).__name__}: {exc}")
        raise typer.Exit(2) from exc
    if as_json:
        out.print(json.dumps([s.as_json() for s in steps], indent=2))
    else:
        for step in steps:
            out.print(f"{step.topic}  {step.action}{'  ' + step.detail if step.detail else ''}")
    return steps


@topics_app.command("apply")
def apply_topics(
    file: FileOpt = topic_admin.DEFAULT_FILE,
    partitions: PartitionsOpt = None,
    replication_factor: ReplicationOpt = None,
    min_insync_replicas: InsyncOpt = None,
    as_admin: AdminOpt = False,
    dry_run: Annotated[bool, typer.Option(help="Say what would change; change nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array of steps.")] = False,
) -> None:
    """Create missing topics, add partitions, set the listed configs; report what cannot change in place."""
    steps = _run(dry_run, file, partitions, replication_factor, min_insync_replicas, as_admin, as_json)
    raise typer.Exit(1 if any(s.action == "cannot change" for s in steps) else 0)


@topics_app.command("check")
def check_topics(
    file: FileOpt = topic_admin.DEFAULT_FILE,
    partitions: PartitionsOpt = None,
    replication_factor: ReplicationOpt = None,
    min_insync_replicas: InsyncOpt = None,
    as_admin: AdminOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array of steps.")] = False,
) -> None:
    """Compare the cluster with the file, changing nothing; exit 1 on any difference."""
    steps = _run(True, file, partitions, replication_factor, min_insync_replicas, as_admin, as_json)
    raise typer.Exit(1 if any(s.action != "unchanged" for s in steps) else 0)
