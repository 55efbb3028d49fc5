"""`invoicectl cdar ID [--status CODE]`: the CDAR lifecycle message of one of
an invoice's statuses, as the platform sends it to the other party.

Built from the invoice's history (GetInvoice, with the caller's access) and
checked with the official BR-FR-CDV rules of the release in force; a
message the rules refuse is not printed. Exit codes: 0 printed; 1 no such
invoice or status, or the invoice cannot be expressed as CDAR (e.g. an
unreadable document has no BT-1), or the rules refuse the message; 2
usage, configuration or connection error.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from typing import Annotated

import grpc
import typer
from invoicing.v1 import status_pb2, status_pb2_grpc
from rich.console import Console

from invoicectl.config import Endpoints, channel
from invoicing_common.cdar import CdvRules, CdvRulesMissing, to_xml
from invoicing_common.cdar.history import NotExpressible, lifecycle_message
from invoicing_common.rules import ReleaseConfigError, UnknownRelease, load_book

out = Console(highlight=False, soft_wrap=True, markup=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)


async def _invoice(endpoints: Endpoints, invoice_id: str) -> status_pb2.GetInvoiceResponse:
    async with channel(endpoints.status) as status_channel:
        stub = status_pb2_grpc.StatusServiceStub(status_channel)
        reply: status_pb2.GetInvoiceResponse = await stub.GetInvoice(
            status_pb2.GetInvoiceRequest(invoice_id=invoice_id), timeout=30
        )
        return reply


def cdar(
    invoice_id: Annotated[str, typer.Argument(help="Invoice id.")],
    status_code: Annotated[
        int | None, typer.Option("--status", help="This status (its latest entry); default: the current one.")
    ] = None,
    release: Annotated[
        str | None, typer.Option(help="Check with this release's BR-FR-CDV rules; default: the one in force.")
    ] = None,
) -> None:
    """Print the CDAR (D22B) message of an invoice's status."""
    try:
        book = load_book()
        chosen = book.get(release) if release else book.in_force(datetime.now(UTC).date())
        rules = CdvRules.of(chosen)
    except (ReleaseConfigError, UnknownRelease, CdvRulesMissing) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    try:
        reply = asyncio.run(_invoice(Endpoints.from_env(), invoice_id))
    except grpc.aio.AioRpcError as exc:
        err.print(f"[red]error:[/red] {exc.code().name}: {exc.details()}")
        raise typer.Exit(2 if exc.code() == grpc.StatusCode.UNAVAILABLE else 1) from exc
    rows = list(enumerate(reply.history))
    if status_code is not None:
        rows = [(i, c) for i, c in rows if c.status_code == status_code]
    if not rows:
        err.print(f"[red]error:[/red] invoice {invoice_id} has no status {status_code} in its history")
        raise typer.Exit(1)
    position, change = rows[-1]
    try:
        message = lifecycle_message(
            reply.invoice_id, reply.summary, change, position, os.environ.get("PLATFORM_ID", "local")
        )
    except NotExpressible as exc:
        err.print(f"[red]error:[/red] no CDAR for this invoice: {exc}")
        raise typer.Exit(1) from exc
    data = to_xml(message)
    findings = rules.check(data)
    if findings:
        # The platform never sends such a message: it is a bug to report.
        err.print(f"[red]error:[/red] BR-FR-CDV {chosen.version} refuses the message (a bug, please report it):")
        for f in findings:
            err.print(f"  {f.rule}  {f.location}  {f.message}")
        raise typer.Exit(1)
    out.print(data.decode("utf-8"), end="")
