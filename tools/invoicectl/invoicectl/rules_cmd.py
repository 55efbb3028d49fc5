"""invoicectl rules: the official French rules releases, and what a release
run in shadow would change.

Exit codes: 0 done; 2 usage, configuration or connection error.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, date, datetime
from typing import Annotated, Any

import typer
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]
from rich.console import Console
from rich.table import Table

from invoicectl import rules
from invoicectl.config import Endpoints
from invoicing_common import topics
from invoicing_common.auth.client import ConfigError
from invoicing_common.rules import ReleaseConfigError, load_book
from invoicing_common.rules.releases import releases_file

rules_app = typer.Typer(
    help="French rules (BR-FR) releases: list them, and review a release run in shadow.",
    no_args_is_help=True,
    add_completion=False,
)
out = Console(highlight=False, soft_wrap=True, markup=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _day(value: date | None) -> str | None:
    return value.isoformat() if value is not None else None


@rules_app.command("list")
def list_releases(
    as_json: JsonOpt = False,
    on: Annotated[
        str | None, typer.Option(help="The date that 'in force' refers to (YYYY-MM-DD; default: today).")
    ] = None,
) -> None:
    """The releases this platform knows, their windows, and the one in force."""
    try:
        book = load_book()
        today = date.fromisoformat(on) if on else datetime.now(UTC).date()
    except ReleaseConfigError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    except ValueError as exc:
        err.print(f"[red]error:[/red] --on must be a date (YYYY-MM-DD), not {on!r}")
        raise typer.Exit(2) from exc
    in_force = book.in_force(today).version
    rows: list[dict[str, Any]] = [
        {
            "version": r.version,
            "published": r.published.isoformat(),
            "valid_from": _day(r.valid_from),
            "valid_to": _day(r.valid_to),
            "in_force": r.version == in_force,
            "files": dict(r.files),
        }
        for r in book.releases
    ]
    if as_json:
        out.print(json.dumps({"file": str(releases_file()), "on": today.isoformat(), "releases": rows}, indent=2))
        return
    table = Table("version", "published", "valid from", "valid to", "in force", "rule sets")
    for row in rows:
        table.add_row(
            row["version"], row["published"], row["valid_from"] or "(on request)", row["valid_to"] or "",
            "yes" if row["in_force"] else "", ", ".join(row["files"]),
        )  # fmt: skip
    out.print(table)
    out.print(f"in force on {today.isoformat()}: {in_force} (from {releases_file()})")


@rules_app.command("diff")
def diff(
    since: Annotated[str, typer.Option(help="From this date (YYYY-MM-DD, UTC) or instant (ISO 8601).")],
    as_json: JsonOpt = False,
    verdicts_only: Annotated[
        bool, typer.Option("--verdicts-only", help="Only invoices the two releases decide differently.")
    ] = False,
) -> None:
    """Invoices on which the release run in shadow (VALIDATE_RULES_SHADOW)
    disagrees with the one applied: another verdict, or other fatal rules."""
    try:
        start = datetime.fromisoformat(since)
    except ValueError as exc:
        err.print(f"[red]error:[/red] --since must be a date or an ISO 8601 instant, not {since!r}")
        raise typer.Exit(2) from exc
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    try:
        found = asyncio.run(rules.disagreements(Endpoints.from_env().kafka, start))
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    except (KafkaError, OSError, RuntimeError) as exc:
        err.print(f"[red]error:[/red] reading {topics.RULES_SHADOW}: {type(exc).__name__}: {exc}")
        raise typer.Exit(2) from exc
    if verdicts_only:
        found = [d for d in found if d.kind == "verdict"]
    if as_json:
        out.print(json.dumps([d.as_json() for d in found], indent=2, ensure_ascii=False))
        return
    table = Table("invoice", "BT-1", "BT-2", "kind", "applied", "shadow", "only applied", "only shadow")
    for d in found:
        j = d.as_json()
        a, s = j["active"], j["shadow"]
        table.add_row(
            j["invoice_id"], j["invoice_number"], j["issue_date"], j["kind"],
            f"{a['release']} {'valid' if a['valid'] else 'INVALID'}",
            f"{s['release']} {'valid' if s['valid'] else 'INVALID'}",
            ", ".join(a["only_rules"]), ", ".join(s["only_rules"]),
        )  # fmt: skip
    out.print(table)
    verdicts = sum(1 for d in found if d.kind == "verdict")
    out.print(f"{len(found)} disagreement(s) since {start.isoformat()}, {verdicts} on the verdict")
