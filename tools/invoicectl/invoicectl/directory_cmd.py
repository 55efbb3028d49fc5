"""invoicectl directory: load and query the buyer directory (route service).

Exit codes: 0 success; 1 the operation ran but failed (rows rejected, entry
not found, invoice would be refused); 2 usage, file or connection error.
"""

from __future__ import annotations

import asyncio
import csv
import json
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TextIO

import grpc
import typer
from google.protobuf.json_format import MessageToDict
from invoicing.v1 import common_pb2, directory_pb2, directory_pb2_grpc, events_pb2
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from invoicectl.config import Endpoints, channel

directory_app = typer.Typer(
    help="Load and query the buyer directory (served by the route service).",
    no_args_is_help=True,
    add_completion=False,
)
out = Console(highlight=False, soft_wrap=True, markup=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)

ENTRY_COLUMNS = (
    "siren", "siret", "routing_code", "suffix", "platform_id", "requires_service_code",
    "requires_commitment_number", "valid_from", "valid_to",
)  # fmt: skip
SERVICE_COLUMNS = ("siren", "siret", "service_code", "name", "active", "requires_commitment_number")
_TRUE = frozenset({"1", "true", "yes", "y", "t", "oui", "o"})
_FALSE = frozenset({"", "0", "false", "no", "n", "f", "non"})
BATCH_ROWS = 10_000
MAX_PRINTED_REJECTIONS = 1000


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


class RowError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def parse_bool(value: str, field: str, default: bool = False) -> bool:
    text = value.strip().lower()
    if text == "":
        return default
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise RowError(field, f"{value!r} is not a boolean (true/false, 1/0, yes/no)")


@dataclass(frozen=True)
class Rejected:
    line: int
    field: str
    message: str


Filler = Callable[[directory_pb2.ImportRequest, int, dict[str, str]], None]


def fill_entry(request: directory_pb2.ImportRequest, line: int, row: dict[str, str]) -> None:
    requires_service_code = parse_bool(row.get("requires_service_code", ""), "requires_service_code")
    requires_commitment_number = parse_bool(row.get("requires_commitment_number", ""), "requires_commitment_number")
    item = request.entries.add()
    item.line = line
    entry = item.entry
    entry.siren = row["siren"]
    entry.siret = row.get("siret", "")
    entry.routing_code = row.get("routing_code", "")
    entry.suffix = row.get("suffix", "")
    entry.platform_id = row.get("platform_id", "")
    entry.requires_service_code = requires_service_code
    entry.requires_commitment_number = requires_commitment_number
    entry.valid_from = row.get("valid_from", "")
    entry.valid_to = row.get("valid_to", "")


def fill_service(request: directory_pb2.ImportRequest, line: int, row: dict[str, str]) -> None:
    active = parse_bool(row.get("active", ""), "active", default=True)
    requires_commitment_number = parse_bool(row.get("requires_commitment_number", ""), "requires_commitment_number")
    item = request.services.add()
    item.line = line
    service = item.service
    service.siren = row["siren"]
    service.siret = row.get("siret", "")
    service.code = row.get("service_code", "")
    service.name = row.get("name", "")
    service.active = active
    service.requires_commitment_number = requires_commitment_number


def read_batches(
    source: TextIO, columns: tuple[str, ...], fill: Filler, rejected: list[Rejected], batch_rows: int = BATCH_ROWS
) -> Iterator[tuple[directory_pb2.ImportRequest, int]]:
    """ImportRequests of up to ``batch_rows`` rows, with the number of CSV
    rows each consumed; rows that cannot even be read go to ``rejected``."""
    reader = csv.reader(source)
    header = [h.strip().lower() for h in next(reader, [])]
    unknown = [h for h in header if h not in columns]
    if not header or "siren" not in header or unknown:
        raise RowError("header", f"expected the columns {','.join(columns)}; got {','.join(header) or 'nothing'}")
    request = directory_pb2.ImportRequest()
    rows = 0
    for values in reader:
        rows += 1
        line = reader.line_num
        if not values or all(not v.strip() for v in values):
            rows -= 1
            continue
        if len(values) != len(header):
            rejected.append(Rejected(line, "row", f"{len(values)} fields; the header has {len(header)}"))
            continue
        try:
            fill(request, line, dict(zip(header, values, strict=True)))
        except RowError as exc:
            rejected.append(Rejected(line, exc.field, exc.message))
        if rows >= batch_rows:
            yield request, rows
            request, rows = directory_pb2.ImportRequest(), 0
    if rows:
        yield request, rows


def _count_rows(path: Path) -> int:
    with path.open("rb") as f:
        return max(sum(1 for _ in f) - 1, 0)


async def _import(path: Path, columns: tuple[str, ...], fill: Filler, show_progress: bool) -> int:
    rejected: list[Rejected] = []
    total = _count_rows(path)
    with (
        path.open(newline="", encoding="utf-8-sig") as source,
        Progress(
            TextColumn("importing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=err, disable=not show_progress, transient=False,
        ) as progress,
    ):  # fmt: skip
        task = progress.add_task("import", total=total)

        async def requests() -> AsyncIterator[directory_pb2.ImportRequest]:
            for request, rows in read_batches(source, columns, fill, rejected):
                yield request
                progress.advance(task, rows)

        async with channel(Endpoints.from_env().route) as route:
            stub = directory_pb2_grpc.DirectoryServiceStub(route)
            reply: directory_pb2.ImportResponse = await stub.Import(requests(), timeout=3600)
    rejected += [Rejected(r.line, r.field, r.message) for r in reply.rejected]
    rejected.sort(key=lambda r: r.line)
    for r in rejected[:MAX_PRINTED_REJECTIONS]:
        err.print(f"{path}:{r.line}: rejected: {r.field}: {r.message}", markup=False)
    count = len(rejected) - len(reply.rejected) + reply.rejected_count
    if count > MAX_PRINTED_REJECTIONS:
        err.print(f"... {count - MAX_PRINTED_REJECTIONS} more rejected rows not shown")
    read = reply.received + len(rejected) - len(reply.rejected)
    out.print(f"{path}: {read} rows, {reply.written} written, {reply.unchanged} unchanged, {count} rejected")
    return 1 if count else 0


def _run_import(file: Path, columns: tuple[str, ...], fill: Filler) -> None:
    if not file.is_file():
        raise _fail(f"cannot read {file}", 2)
    try:
        code = asyncio.run(_import(file, columns, fill, show_progress=sys.stderr.isatty()))
    except RowError as exc:
        raise _fail(f"{file}: {exc.field}: {exc.message}", 2) from exc
    except UnicodeDecodeError as exc:
        raise _fail(f"{file} is not UTF-8: {exc}", 2) from exc
    except grpc.aio.AioRpcError as exc:
        raise _fail(
            f"{exc.code().name}: {exc.details()}", 2 if exc.code() == grpc.StatusCode.UNAVAILABLE else 1
        ) from exc
    raise typer.Exit(code)


@directory_app.command("import")
def import_entries(
    file: Annotated[Path, typer.Argument(help="CSV: " + ",".join(ENTRY_COLUMNS))],
) -> None:
    """Import directory entries; each rejected row is reported and writes nothing."""
    _run_import(file, ENTRY_COLUMNS, fill_entry)


@directory_app.command("import-services")
def import_services(
    file: Annotated[Path, typer.Argument(help="CSV: " + ",".join(SERVICE_COLUMNS))],
) -> None:
    """Import buyer services (B2G service codes) under existing entries."""
    _run_import(file, SERVICE_COLUMNS, fill_service)


def _identifier(text: str) -> common_pb2.PartyIdentifier:
    scheme, sep, value = text.partition(":")
    if not sep or not scheme or not value:
        raise _fail(f"--id {text!r}: expected SCHEME:VALUE, e.g. 0009:51234567900017", 2)
    return common_pb2.PartyIdentifier(value=value, scheme=scheme)


def _timestamp(text: str) -> Any:
    try:
        at = datetime.fromisoformat(text)
    except ValueError as exc:
        raise _fail(f"--as-of {text!r} is not an ISO date or date-time", 2) from exc
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    from google.protobuf.timestamp_pb2 import Timestamp

    ts = Timestamp()
    ts.FromDatetime(at)
    return ts


def _call(method: str, request: Any) -> Any:
    async def run() -> Any:
        async with channel(Endpoints.from_env().route) as route:
            stub = directory_pb2_grpc.DirectoryServiceStub(route)
            return await getattr(stub, method)(request, timeout=30)

    try:
        return asyncio.run(run())
    except grpc.aio.AioRpcError as exc:
        raise _fail(
            f"{exc.code().name}: {exc.details()}", 2 if exc.code() == grpc.StatusCode.UNAVAILABLE else 1
        ) from exc


def _as_json(message: Any) -> str:
    return json.dumps(
        MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True),
        ensure_ascii=False,
        indent=2,
    )


@directory_app.command()
def resolve(
    address: Annotated[str, typer.Argument(help="BT-49 value, e.g. 512345679 or 512345679_51234567900017_CODE")] = "",
    scheme: Annotated[str, typer.Option(help="BT-49 scheme.")] = "0225",
    ids: Annotated[list[str] | None, typer.Option("--id", help="BT-46/BT-47 as SCHEME:VALUE (repeatable).")] = None,
    service_code: Annotated[str, typer.Option(help="BT-10 buyer reference (service code).")] = "",
    commitment: Annotated[str, typer.Option(help="BT-13 purchase order reference (commitment number).")] = "",
    as_of: Annotated[str, typer.Option(help="Decide with the directory as it was then (ISO date/time).")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print the decision as JSON.")] = False,
) -> None:
    """Print where an invoice with these buyer identifiers would be routed, and why."""
    request = directory_pb2.ResolveRequest(
        buyer_ids=[_identifier(i) for i in ids or []],
        buyer_reference=service_code,
        purchase_order_reference=commitment,
    )
    if address:
        request.buyer_endpoint.value, request.buyer_endpoint.scheme = address, scheme
    if as_of:
        request.as_of.CopyFrom(_timestamp(as_of))
    reply: directory_pb2.ResolveResponse = _call("Resolve", request)
    routed = reply.outcome == events_pb2.ROUTING_OUTCOME_ROUTED
    if as_json:
        out.print(_as_json(reply))
    elif routed:
        where = "this platform (203 MADE_AVAILABLE)" if reply.local_delivery else "another platform (201 ISSUED)"
        out.print(f"ROUTED to {reply.destination_platform}: {where}")
        out.print(f"  entry  {reply.entry.entry_id}  ({reply.matched_level})")
    else:
        out.print(f"REJECTED {reply.reason.code}: {reply.reason.text}")
        if reply.entry.entry_id:
            out.print(f"  entry  {reply.entry.entry_id}  ({reply.matched_level})")
    if not as_json:
        for step in reply.trace:
            out.print(f"  - {step}")
    raise typer.Exit(0 if routed else 1)


@directory_app.command()
def get(
    entry_id: Annotated[str, typer.Argument(help="SIREN[_SIRET[_CODE]|_SUFFIX][@VALID_FROM]")],
    as_of: Annotated[str, typer.Option(help="The version recorded then (ISO date/time).")] = "",
) -> None:
    """Print one entry (JSON) with its services."""
    request = directory_pb2.GetRequest(entry_id=entry_id)
    if as_of:
        request.as_of.CopyFrom(_timestamp(as_of))
    out.print(_as_json(_call("Get", request)))


@directory_app.command("list")
def list_entries(
    siren: Annotated[str, typer.Option(help="Only this SIREN.")] = "",
    platform_id: Annotated[str, typer.Option(help="Only entries on this platform.")] = "",
    limit: Annotated[int, typer.Option(help="At most this many entries.")] = 100,
) -> None:
    """Print entries, one per line: entry_id platform_id valid_from..valid_to flags."""
    token = ""
    shown = 0
    while shown < limit:
        request = directory_pb2.ListRequest(
            siren=siren, platform_id=platform_id, page_size=min(1000, limit - shown), page_token=token
        )
        reply: directory_pb2.ListResponse = _call("List", request)
        for e in reply.entries:
            flags = ",".join(
                name
                for name, on in (
                    ("service_code", e.requires_service_code),
                    ("commitment", e.requires_commitment_number),
                    ("inactive", not e.active),
                )
                if on
            )
            out.print(f"{e.entry_id}  {e.platform_id}  {e.valid_from or '…'}..{e.valid_to or '…'}  {flags}".rstrip())
            shown += 1
        token = reply.next_page_token
        if not token:
            break


@directory_app.command()
def delete(entry_id: Annotated[str, typer.Argument(help="Entry id to delete.")]) -> None:
    """Delete an entry (published as a tombstone; routing stops using it)."""
    reply: directory_pb2.DeleteResponse = _call("Delete", directory_pb2.DeleteRequest(entry_id=entry_id))
    out.print("deleted" if reply.deleted else "no such entry")
    raise typer.Exit(0 if reply.deleted else 1)
