"""invoicectl: submit invoices, read their status and download their
documents, follow the status stream.

Every call authenticates as the account in INVOICING_CLIENT_ID /
INVOICING_CLIENT_SECRET (see invoicectl.config). Exit codes: 0 success; 1
the operation ran but failed (not found, refused, timed out); 2 usage,
configuration, credentials or I/O error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
from invoicing.v1 import common_pb2, events_pb2, ingest_pb2, ingest_pb2_grpc, status_pb2, status_pb2_grpc
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from invoicectl.accounts_cmd import accounts_app, token
from invoicectl.bench.cli import bench
from invoicectl.cdar_cmd import cdar
from invoicectl.config import Endpoints, account_sirens, channel, sync_channel
from invoicectl.directory_cmd import directory_app
from invoicectl.dlq_cmd import dlq_app
from invoicectl.kafka_follow import StatusFollower
from invoicectl.listing import fetch_list
from invoicectl.render import (
    document_ref_json,
    document_ref_line,
    invoice_json,
    is_pipeline_final,
    iso,
    list_item_json,
    origin_name,
    status_event_json,
    status_event_line,
)
from invoicectl.rules_cmd import rules_app
from invoicectl.topics_cmd import topics_app
from invoicectl.transfer import (
    ByteProgress,
    DestinationExists,
    Outgoing,
    ProtocolError,
    Received,
    SourceError,
    VerificationError,
    VerifiedSink,
    WriteError,
    open_sink,
    prepare,
    receive_document,
    safe_filename,
    upload_requests,
)
from invoicectl.validate_cmd import validate
from invoicing_common.auth.client import ConfigError, TokenError
from invoicing_common.grpc_streams import send_stream
from invoicing_status.api import RESUME_POSITION_KEY
from invoicing_status.lifecycle import REACHED_THE_BUYER

app = typer.Typer(help="Command-line client for the invoicing pipeline.", no_args_is_help=True, add_completion=False)
out = Console(highlight=False, soft_wrap=True, markup=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)
app.command()(validate)
app.command()(cdar)
app.command()(bench)
app.command()(token)
app.add_typer(directory_app, name="directory")
app.add_typer(accounts_app, name="accounts")
app.add_typer(topics_app, name="topics")
app.add_typer(dlq_app, name="dlq")
app.add_typer(rules_app, name="rules")

# Uploads and downloads of up to the archive's limits (tens of MiB), on
# slow links too.
UPLOAD_TIMEOUT_SECONDS = 600
DOWNLOAD_TIMEOUT_SECONDS = 600


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def _prepare(files: list[Path], attachments: list[Path]) -> list[Outgoing]:
    docs = []
    for path in files:
        try:
            docs.append(prepare(path, attachments))
        except OSError as exc:
            raise _fail(f"cannot read {exc.filename or path}: {exc.strerror}", 2) from exc
    return docs


# UploadInvoice refusals that concern the document, reported in place in a
# batch as SubmitInvoices does; any other status ends the command.
_REFUSALS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
_FIELD_PREFIX = re.compile(r"^([A-Za-z_][\w.\[\]]*): (.*)$", re.DOTALL)


def _refusal(code: str, details: str) -> ingest_pb2.SubmitInvoiceResponse:
    # The server prefixes a refusal's details with the field at fault.
    match = _FIELD_PREFIX.match(details)
    field, message = match.groups() if match else ("", details)
    return ingest_pb2.SubmitInvoiceResponse(error=ingest_pb2.SubmitError(code=code, field=field, message=message))


async def _upload(
    endpoints: Endpoints, doc: Outgoing, key: str, show_progress: bool
) -> ingest_pb2.SubmitInvoiceResponse:
    with sync_channel(endpoints.ingest) as ingest, ByteProgress(err, enabled=show_progress) as progress:
        stub = ingest_pb2_grpc.IngestServiceStub(ingest)
        progress.start(f"uploading {doc.path.name}", doc.total_bytes)
        requests = upload_requests(doc.files, key, progress.advance)
        return await send_stream(stub.UploadInvoice.future, requests, UPLOAD_TIMEOUT_SECONDS)


async def _submit(
    endpoints: Endpoints, docs: list[Outgoing], key: str, show_progress: bool
) -> list[ingest_pb2.SubmitInvoiceResponse]:
    async with channel(endpoints.ingest) as ingest:
        stub = ingest_pb2_grpc.IngestServiceStub(ingest)
        if len(docs) == 1:
            doc = docs[0]
            if doc.data is None:
                return [await _upload(endpoints, doc, key, show_progress)]
            request = ingest_pb2.SubmitInvoiceRequest(document=doc.data, filename=doc.path.name, idempotency_key=key)
            reply: ingest_pb2.SubmitInvoiceResponse = await stub.SubmitInvoice(request, timeout=60)
            return [reply]

        whole = [(i, doc.path.name, doc.data) for i, doc in enumerate(docs) if doc.data is not None]
        replies: dict[int, ingest_pb2.SubmitInvoiceResponse] = {}

        async def requests() -> Any:
            for _, filename, data in whole:
                yield ingest_pb2.SubmitInvoiceRequest(document=data, filename=filename)

        if whole:
            with Progress(
                TextColumn("submitting"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                console=err, disable=not show_progress, transient=True,
            ) as progress:  # fmt: skip
                task = progress.add_task("submit", total=len(whole))
                sent = iter(whole)
                async for reply in stub.SubmitInvoices(requests(), timeout=600):
                    replies[next(sent)[0]] = reply
                    progress.advance(task)
        # Too big for one message: each on its own UploadInvoice, after the
        # batch, so that one progress display shows at a time.
        for i, doc in enumerate(docs):
            if doc.data is not None:
                continue
            try:
                replies[i] = await _upload(endpoints, doc, "", show_progress)
            except grpc.RpcError as exc:
                if exc.code() not in _REFUSALS:
                    raise
                replies[i] = _refusal(exc.code().name, exc.details() or "")
            except SourceError as exc:
                # The upload was cancelled before it ended: nothing stored.
                replies[i] = _refusal("CANCELLED", f"document: {exc.message}; nothing was stored")
        return [replies[i] for i in range(len(docs))]


async def _follow(follower: StatusFollower, pending: set[str], timeout: float, as_json: bool) -> set[str]:
    """Print status events of ``pending`` invoices until each has its first
    final pipeline status (201, 203, 213 or 501); returns those still pending."""

    async def consume() -> None:
        async for event in follower.events():
            if event.invoice_id not in pending:
                continue
            out.print(json.dumps(status_event_json(event)) if as_json else status_event_line(event))
            if is_pipeline_final(event.status_code):
                pending.discard(event.invoice_id)
                if not pending:
                    return

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(consume(), timeout)
    return pending


@app.command()
def submit(
    files: Annotated[list[Path], typer.Argument(help="Invoice documents (UBL, CII XML or Factur-X PDF).")],
    attach: Annotated[
        list[Path] | None,
        typer.Option("--attach", help="A file to send beside the invoice; repeat for several (one invoice only)."),
    ] = None,
    idempotency_key: Annotated[str, typer.Option(help="Retry key; only with a single file.")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON array of receipts.")] = False,
    follow: Annotated[bool, typer.Option(help="Then print status events until each invoice is final.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --follow waits for final statuses.")] = 60.0,
) -> None:
    """Submit invoices; prints `invoice_id file` per line. An invoice over
    3 MiB, or with --attach, is streamed (UploadInvoice)."""
    attachments = attach or []
    if idempotency_key and len(files) > 1:
        raise _fail("--idempotency-key applies to a single file", 2)
    if attachments and len(files) > 1:
        raise _fail("--attach applies to a single invoice file", 2)
    docs = _prepare(files, attachments)
    endpoints = Endpoints.from_env()

    async def run() -> int:
        follower = StatusFollower(endpoints.kafka) if follow else None
        if follower is not None:
            await follower.start()
        try:
            replies = await _submit(endpoints, docs, idempotency_key, show_progress=sys.stderr.isatty())
            failed = 0
            receipts: list[dict[str, Any]] = []
            for doc, reply in zip(docs, replies, strict=True):
                path = doc.path
                if reply.HasField("error"):
                    failed += 1
                    error = {"code": reply.error.code, "field": reply.error.field, "message": reply.error.message}
                    receipts.append({"file": str(path), "error": error})
                    if not as_json:
                        err.print(f"[red]refused[/red] {path}: {reply.error.field}: {reply.error.message}")
                    continue
                receipts.append({"invoice_id": reply.invoice_id, "file": str(path),
                                 "received_at": iso(reply.received_at), "duplicate": reply.duplicate,
                                 "document": document_ref_json(reply.document) if reply.HasField("document") else None,
                                 "attachments": [document_ref_json(a) for a in reply.attachments]})  # fmt: skip
                if not as_json:
                    suffix = "  (duplicate: original receipt)" if reply.duplicate else ""
                    out.print(f"{reply.invoice_id} {path}{suffix}")
            if as_json:
                out.print(json.dumps(receipts, indent=2))
            if follower is not None:
                for known in (r for r in receipts if r.get("duplicate")):
                    # A retry starts no journey: show where the original stands.
                    current = await _get_invoice(endpoints, known["invoice_id"])
                    out.print(f"{current.invoice_id}  {current.status_code} {current.status}  (already known)")
                ids = {r["invoice_id"] for r in receipts if "invoice_id" in r and not r["duplicate"]}
                left = await _follow(follower, ids, timeout, as_json)
                if left:
                    err.print(f"[red]{len(left)} invoice(s) without a final status after {timeout:.0f}s[/red]")
                    return 1
            return 1 if failed else 0
        finally:
            if follower is not None:
                await follower.stop()

    try:
        code = asyncio.run(run())
    except grpc.RpcError as exc:  # UploadInvoice's (synchronous API) as well as grpc.aio's
        raise _fail(
            f"{exc.code().name}: {exc.details()}", 2 if exc.code() == grpc.StatusCode.UNAVAILABLE else 1
        ) from exc
    except SourceError as exc:
        raise _fail(f"{exc}; the upload was cancelled and nothing was stored", 2) from exc
    raise typer.Exit(code)


async def _get_invoice(endpoints: Endpoints, invoice_id: str) -> status_pb2.GetInvoiceResponse:
    async with channel(endpoints.status) as status_channel:
        stub = status_pb2_grpc.StatusServiceStub(status_channel)
        reply: status_pb2.GetInvoiceResponse = await stub.GetInvoice(
            status_pb2.GetInvoiceRequest(invoice_id=invoice_id), timeout=30
        )
        return reply


@app.command()
def status(
    invoice_id: Annotated[str, typer.Argument(help="Invoice id returned by submit.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object.")] = False,
) -> None:
    """Show an invoice's current status and its history."""
    endpoints = Endpoints.from_env()

    try:
        reply = asyncio.run(_get_invoice(endpoints, invoice_id))
    except grpc.aio.AioRpcError as exc:
        raise _fail(
            f"{exc.code().name}: {exc.details()}", 2 if exc.code() == grpc.StatusCode.UNAVAILABLE else 1
        ) from exc
    data = invoice_json(reply)
    if as_json:
        out.print(json.dumps(data, indent=2, ensure_ascii=False))
        return
    reason = f"  ({data['reason_code']}: {data['reason']})" if data["reason_code"] else ""
    out.print(f"{data['invoice_id']}  {data['status_code']} {data['status']}{reason}")
    if data["hold"]:
        hold = data["hold"]
        out.print(f"  HELD      since {hold['since']} at {hold['stage']} ({hold['code']}): {hold['message']}")
    if data["filename"]:
        out.print(f"  file      {data['filename']}")
    if reply.HasField("document"):
        out.print(f"  document  {document_ref_line(reply.document)}")
    for attachment in reply.attachments:
        out.print(f"  attached  {document_ref_line(attachment)}  ({origin_name(attachment.origin)})")
    if data["trace_id"]:
        out.print(f"  trace_id  {data['trace_id']}")
    if data["due_date"]:
        out.print(f"  due       {data['due_date']}")
    if data["routing"]:
        r = data["routing"]
        where = r["destination_platform"] or "-"
        why = f"  {r['reason_code']}: {r['reason']}" if r["reason_code"] else ""
        out.print(f"  routing   {r['outcome']} -> {where}{'  (this platform)' if r['local_delivery'] else ''}{why}")
    for h in data["history"]:
        why = f"  {h['reason_code']}: {h['reason']}" if h["reason_code"] else ""
        paid = h["payment"]
        if paid:
            why += f"  {paid['amount']} {paid['currency']} on {paid['paid_on']}"
        out.print(f"  {h['at']}  {h['status_code']} {h['status']:<15} by {h['actor']}{why}")
    for f in data["findings"]:
        out.print(f"  [{f['severity']}] {f['rule']}  {f['location']}  {f['message']}")


@app.command()
def download(
    invoice_id: Annotated[str, typer.Argument(help="Invoice id.")],
    attachment: Annotated[
        str, typer.Option("--attachment", help="An attachment, by file name or SHA-256 (default: the invoice).")
    ] = "",
    out_path: Annotated[
        str,
        typer.Option(
            "--out", help="File or directory to write to, or - for stdout (default: the document's name, here)."
        ),
    ] = "",
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object.")] = False,
) -> None:
    """Download an invoice's document, or one of its attachments, checking
    its size and SHA-256 before it lands: a failed or damaged download
    writes nothing."""
    if as_json and out_path == "-":
        raise _fail("--json and --out - both write to stdout: use one", 2)
    endpoints = Endpoints.from_env()
    request = ingest_pb2.GetInvoiceDocumentRequest(invoice_id=invoice_id, attachment=attachment)

    async def fetch() -> Received:
        async with channel(endpoints.ingest) as ingest:
            stub = ingest_pb2_grpc.DocumentServiceStub(ingest)
            with ByteProgress(err, enabled=sys.stderr.isatty()) as progress:

                def sink_for(ref: common_pb2.DocumentRef) -> VerifiedSink:
                    sink = open_sink(out_path, ref, invoice_id, overwrite=force, stdout=sys.stdout.buffer)
                    progress.start(f"downloading {safe_filename(ref.filename) or invoice_id}", ref.size_bytes)
                    return sink

                call = stub.GetInvoiceDocument(request, timeout=DOWNLOAD_TIMEOUT_SECONDS)
                try:
                    return await receive_document(call, sink_for, progress.advance)
                finally:
                    # Stops the server's stream when a mismatch ended it early.
                    call.cancel()

    try:
        received = asyncio.run(fetch())
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.DATA_LOSS:
            raise _fail(f"DATA_LOSS: the stored file is damaged ({exc.details()}); nothing was written") from exc
        raise _rpc_failed(exc) from exc
    except DestinationExists as exc:
        raise _fail(f"{exc.path} exists: --force overwrites it, --out writes elsewhere", 2) from exc
    except (VerificationError, ProtocolError) as exc:
        raise _fail(f"the download did not verify: {exc}; nothing was written") from exc
    except WriteError as exc:
        raise _fail(f"{exc}; nothing was written", 2) from exc
    ref = received.document
    if as_json:
        data = {"invoice_id": invoice_id, "path": received.where, "sha256": ref.sha256, "size_bytes": ref.size_bytes,
                "media_type": ref.media_type, "filename": ref.filename, "verified": True}  # fmt: skip
        out.print(json.dumps(data, indent=2, ensure_ascii=False))
    elif received.where != "-":
        out.print(f"{received.where}  {ref.size_bytes} bytes  {ref.media_type or '-'}  sha256 {ref.sha256}  verified")


def _filter(
    seller: str, buyer: str, statuses: list[int] | None, since: datetime | None, until: datetime | None
) -> status_pb2.InvoiceFilter:
    f = status_pb2.InvoiceFilter(seller_id=seller, buyer_id=buyer, status_codes=statuses or [])
    if since is not None:
        f.received_from.FromDatetime(since if since.tzinfo else since.replace(tzinfo=UTC))
    if until is not None:
        f.received_to.FromDatetime(until if until.tzinfo else until.replace(tzinfo=UTC))
    return f


SellerOpt = Annotated[str, typer.Option("--seller", help="Seller identifier (SIREN, SIRET, VAT id).")]
BuyerOpt = Annotated[str, typer.Option("--buyer", help="Buyer identifier (SIREN, SIRET, VAT id).")]
StatusOpt = Annotated[list[int] | None, typer.Option("--status", help="Status code; repeat for several.")]
SinceOpt = Annotated[datetime | None, typer.Option("--since", help="Received at or after (ISO 8601, UTC).")]
UntilOpt = Annotated[datetime | None, typer.Option("--until", help="Received before (ISO 8601, UTC).")]


def _rpc_failed(exc: grpc.aio.AioRpcError) -> typer.Exit:
    return _fail(f"{exc.code().name}: {exc.details()}", 2 if exc.code() == grpc.StatusCode.UNAVAILABLE else 1)


@app.command("list")
def list_invoices(
    seller: SellerOpt = "",
    buyer: BuyerOpt = "",
    status_codes: StatusOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    limit: Annotated[int, typer.Option(help="Invoices to show (0: all).")] = 50,
    page_size: Annotated[int, typer.Option(help="Invoices per request (1-500).")] = 100,
    unpaid: Annotated[
        bool, typer.Option("--unpaid", help="Only invoices still owed: 203 or later, not final (210, 212, 220, 221).")
    ] = False,
    due_before: Annotated[
        str, typer.Option("--due-before", help="Only invoices due (BT-9) before this date (YYYY-MM-DD).")
    ] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON array.")] = False,
) -> None:
    """List invoices, newest first, following the pages."""
    endpoints = Endpoints.from_env()
    f = _filter(seller, buyer, status_codes, since, until)
    f.unpaid, f.due_before = unpaid, due_before

    try:
        items = asyncio.run(fetch_list(endpoints.status, f, limit, page_size))
    except grpc.aio.AioRpcError as exc:
        raise _rpc_failed(exc) from exc
    print_list(items, as_json)


# A buyer's inbox: what was made available to it on this platform (203) and
# on; 201 went to another platform, 213 and 501 never reached the buyer.
INBOX_STATUSES = sorted(s.value for s in REACHED_THE_BUYER)


@app.command()
def inbox(
    buyers: Annotated[
        list[str] | None,
        typer.Option("--buyer", help="Buyer SIREN; repeat for several (default: every company of the account)."),
    ] = None,
    seller: SellerOpt = "",
    since: SinceOpt = None,
    limit: Annotated[int, typer.Option(help="Invoices to show (0: all).")] = 50,
    page_size: Annotated[int, typer.Option(help="Invoices per request (1-500).")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON array.")] = False,
) -> None:
    """The invoices addressed to the account's companies as buyer and made
    available to them (203 or later), newest first."""
    endpoints = Endpoints.from_env()
    try:
        chosen = buyers or account_sirens()
    except (ConfigError, TokenError) as exc:
        raise _fail(str(exc), 2) from exc
    if not chosen:
        raise _fail("this account acts for no company (no SIREN in its token): give --buyer SIREN", 2)

    async def fetch() -> list[status_pb2.InvoiceListItem]:
        found: dict[str, status_pb2.InvoiceListItem] = {}
        for siren in chosen:
            f = _filter(seller, siren, INBOX_STATUSES, since, None)
            for item in await fetch_list(endpoints.status, f, limit, page_size):
                found[item.invoice_id] = item
        newest = sorted(
            found.values(), key=lambda i: (i.received_at.seconds, i.received_at.nanos, i.invoice_id), reverse=True
        )
        return newest[:limit] if limit else newest

    try:
        items = asyncio.run(fetch())
    except grpc.aio.AioRpcError as exc:
        raise _rpc_failed(exc) from exc
    print_list(items, as_json)


def print_list(items: list[status_pb2.InvoiceListItem], as_json: bool) -> None:
    if as_json:
        out.print(json.dumps([list_item_json(i) for i in items], indent=2, ensure_ascii=False))
        return
    for i in items:
        reason = f"  {i.reason.code}" if i.reason.code else ""
        due = f"  due {i.due_date}" if i.due_date else ""
        out.print(
            f"{i.invoice_id}  {iso(i.received_at)}  {i.status_code} {i.status:<18} {i.invoice_number}{due}{reason}"
        )


@app.command()
def update(
    invoice_id: Annotated[str, typer.Argument(help="Invoice id.")],
    status_code: Annotated[int, typer.Option("--status", help="New status code, e.g. 204.")],
    reason_code: Annotated[
        str, typer.Option(help="Reason code (required for 206, 207, 208, 210; codes: docs/lifecycle.md).")
    ] = "",
    reason: Annotated[str, typer.Option(help="Reason text.")] = "",
    role: Annotated[str, typer.Option(hidden=True, help="Ignored (the account's role decides).")] = "",
    actor: Annotated[str, typer.Option(hidden=True, help="Ignored (the history records the account).")] = "",
    request_id: Annotated[str, typer.Option(help="Retry key: the same id applies once.")] = "",
    amount: Annotated[str, typer.Option(help="Amount paid (211) or received (212), e.g. 828.00.")] = "",
    currency: Annotated[str, typer.Option(help="Currency of --amount (default: the invoice's).")] = "",
    paid_on: Annotated[str, typer.Option(help="Date paid (211) or received (212), YYYY-MM-DD.")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object.")] = False,
) -> None:
    """Move an invoice on in its lifecycle: buyer statuses (204-208, 210, 211,
    214, 221) need an account acting for the buyer, supplier statuses (209,
    212, 220, 224-228) one acting for the seller; 211 and 212 carry the
    payment (--amount, --paid-on)."""
    if role or actor:
        err.print("[yellow]warning:[/yellow] --role and --actor are ignored: the account's token decides who acts")
    endpoints = Endpoints.from_env()
    request = status_pb2.UpdateStatusRequest(invoice_id=invoice_id, status_code=status_code, request_id=request_id)
    if reason_code or reason:
        request.reason.code, request.reason.text = reason_code, reason
    if amount or currency or paid_on:
        request.payment.amount, request.payment.currency, request.payment.paid_on = amount, currency, paid_on

    async def call() -> status_pb2.UpdateStatusResponse:
        async with channel(endpoints.status) as status_channel:
            reply: status_pb2.UpdateStatusResponse = await status_pb2_grpc.StatusServiceStub(
                status_channel
            ).UpdateStatus(request, timeout=30)
            return reply

    try:
        reply = asyncio.run(call())
    except grpc.aio.AioRpcError as exc:
        raise _rpc_failed(exc) from exc
    data = {"invoice_id": invoice_id, "status_code": reply.status_code, "status": reply.status,
            "applied": reply.applied, "position": reply.position}  # fmt: skip
    out.print(json.dumps(data) if as_json else f"{invoice_id}  {reply.status_code} {reply.status}"
              + ("" if reply.applied else "  (already applied)"))  # fmt: skip


@app.command()
def watch(
    seller: SellerOpt = "",
    buyer: BuyerOpt = "",
    status_codes: StatusOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    from_position: Annotated[int, typer.Option("--from", help="Resume after this position (0: from now).")] = 0,
    kafka: Annotated[bool, typer.Option(help="Read invoicing.invoice.status.v1 directly instead.")] = False,
    from_beginning: Annotated[bool, typer.Option(help="With --kafka: replay the topic from its start.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    limit: Annotated[int, typer.Option(help="Stop after this many events (0: never).")] = 0,
) -> None:
    """Follow status events as they happen. Each line starts with its position;
    pass the last one to --from to resume, even across restarts."""
    endpoints = Endpoints.from_env()

    def show(event: events_pb2.StatusEvent, position: int | None) -> None:
        if as_json:
            out.print(json.dumps(status_event_json(event, position), ensure_ascii=False))
        else:
            out.print((f"{position}  " if position is not None else "") + status_event_line(event))

    async def via_kafka() -> None:
        follower = StatusFollower(endpoints.kafka, from_beginning=from_beginning)
        await follower.start()
        seen = 0
        try:
            async for event in follower.events():
                show(event, None)
                seen += 1
                if limit and seen >= limit:
                    return
        finally:
            await follower.stop()

    async def via_grpc() -> None:

        request = status_pb2.WatchInvoicesRequest(
            filter=_filter(seller, buyer, status_codes, since, until), from_position=from_position
        )
        seen = 0
        async with channel(endpoints.status) as status_channel:
            stub = status_pb2_grpc.StatusServiceStub(status_channel)
            while True:
                call = stub.WatchInvoices(request)
                try:
                    async for reply in call:
                        show(reply.event, reply.position)
                        seen += 1
                        if limit and seen >= limit:
                            return
                except grpc.aio.AioRpcError as exc:
                    # The stream ends with the token that opened it; the
                    # channel fetches a new one, and the server said where
                    # to resume, so nothing is missed or shown twice.
                    resume = dict(exc.trailing_metadata() or ()).get(RESUME_POSITION_KEY)
                    if exc.code() != grpc.StatusCode.UNAUTHENTICATED or not resume:
                        raise
                    request.from_position = int(resume)
                    continue
                return

    try:
        asyncio.run(via_kafka() if kafka else via_grpc())
    except KeyboardInterrupt:
        pass
    except grpc.aio.AioRpcError as exc:
        raise _rpc_failed(exc) from exc


@app.command("reconcile")
def reconcile_command(
    ids_file: Annotated[Path, typer.Option(help="File with one invoice id per line (e.g. from `submit`).")],
    database_url: Annotated[str, typer.Option(envvar="DATABASE_URL", help="PostgreSQL of the status service.")],
) -> None:
    """Check that history rows and status events match, each exactly once."""
    from invoicectl.reconcile import reconcile

    try:
        ids = [line.split()[0] for line in ids_file.read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise _fail(f"cannot read {ids_file}: {exc.strerror}", 2) from exc
    result = asyncio.run(reconcile(database_url, Endpoints.from_env().kafka, ids))
    out.print(json.dumps(result.as_json(), indent=2))
    raise typer.Exit(0 if result.ok else 1)


def main() -> None:
    """Console entry point: configuration and credential problems end with
    a one-line message and exit code 2, not a traceback."""
    try:
        app()
    except (ConfigError, TokenError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        sys.exit(2)
