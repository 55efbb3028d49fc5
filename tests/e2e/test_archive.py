"""The archive end to end: invoices uploaded with attachments (sent beside
them and carried inside them) are archived once, listed with the invoice,
and downloaded byte for byte by the buyer; other companies cannot read
them; Kafka records carry references, never the bytes; an interrupted or
over-limit upload leaves nothing; a damaged stored chunk is never served."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import facturx  # type: ignore[import-untyped]
import grpc
import pytest
from invoicing.v1 import common_pb2, events_pb2, ingest_pb2

from invoicectl.bench.generator import blank_pdf
from invoicing_common import topics
from tests.e2e.test_access import caller_of, cli_account, invoicectl
from tests.integration.test_directory_api import fresh_siren
from tests.support import (
    SAMPLE_BUYER,
    SAMPLE_SELLER,
    Stack,
    UploadFile,
    collect_until_final,
    download,
    get_invoice,
    invoice_from,
    records_for_key,
    tamper_with_chunks,
    upload,
    upload_requests,
)

pytestmark = pytest.mark.stack

MIB = 1024 * 1024
# What the issue allows a Kafka record of the journey to weigh.
MAX_RECORD_BYTES = 64 * 1024


def _ubl_with_embedded(seller: str, name: str, data: bytes) -> bytes:
    doc, _ = invoice_from(seller)
    reference = (
        "<cac:AdditionalDocumentReference><cbc:ID>ATT-1</cbc:ID>"
        f'<cac:Attachment><cbc:EmbeddedDocumentBinaryObject mimeCode="text/csv" filename="{name}">'
        f"{base64.b64encode(data).decode()}</cbc:EmbeddedDocumentBinaryObject></cac:Attachment>"
        "</cac:AdditionalDocumentReference>"
    )
    return doc.replace(b"</cac:OrderReference>", b"</cac:OrderReference>" + reference.encode(), 1)


def _cii_with_embedded(seller: str, name: str, data: bytes) -> bytes:
    doc, _ = invoice_from(seller, "cii-invoice-valid.xml")
    reference = (
        "<ram:AdditionalReferencedDocument><ram:IssuerAssignedID>ATT-1</ram:IssuerAssignedID>"
        "<ram:TypeCode>916</ram:TypeCode>"
        f'<ram:AttachmentBinaryObject mimeCode="application/pdf" filename="{name}">'
        f"{base64.b64encode(data).decode()}</ram:AttachmentBinaryObject></ram:AdditionalReferencedDocument>"
    )
    return doc.replace(
        b"</ram:ApplicableHeaderTradeAgreement>", reference.encode() + b"</ram:ApplicableHeaderTradeAgreement>", 1
    )


def _facturx_with_file(seller: str, name: str, data: bytes) -> tuple[bytes, bytes]:
    """The PDF, and the invoice XML it carries (itself listed as an attachment)."""
    xml, _ = invoice_from(seller, "cii-invoice-valid.xml")
    pdf: bytes = facturx.generate_from_binary(
        blank_pdf(), xml, flavor="factur-x", level="en16931", check_xsd=False,
        attachments={name: {"filedata": data, "description": "timesheet"}},
    )  # fmt: skip
    return pdf, xml


async def test_each_format_round_trips_byte_for_byte_with_its_attachments(
    stack: Stack, status_follower: Any, tmp_path: Path
) -> None:
    seller, stranger = fresh_siren(), fresh_siren()
    supplier = cli_account("--role", "supplier", "--siren", seller)
    buyer = cli_account("--role", "buyer", "--siren", SAMPLE_BUYER)
    other = cli_account("--role", "buyer", "--siren", stranger)
    try:
        embedded = {
            "ubl": ("hours.csv", b"day;hours\n2025-03-01;7.5\n" + os.urandom(16).hex().encode()),
            "cii": ("delivery-note.pdf", b"%PDF-1.4 delivery note " + os.urandom(2000)),
            "facturx": ("timesheet.csv", b"week;hours\n10;38\n" + os.urandom(16).hex().encode()),
        }
        pdf, pdf_xml = _facturx_with_file(seller, *embedded["facturx"])
        documents = {
            "ubl": ("invoice.xml", _ubl_with_embedded(seller, *embedded["ubl"])),
            "cii": ("invoice-cii.xml", _cii_with_embedded(seller, *embedded["cii"])),
            "facturx": ("invoice.pdf", pdf),
        }
        beside = [
            UploadFile("purchase-order.pdf", b"%PDF-1.7 order " + os.urandom(3 * MIB), "application/pdf"),
            UploadFile("notes.txt", "Livraison conforme, réf. 42\n".encode()),
        ]
        sent: dict[str, dict[str, bytes]] = {}
        ids: dict[str, str] = {}
        for kind, (name, doc) in documents.items():
            reply = await upload(stack.ingest, [UploadFile(name, doc), *beside], caller_of(supplier))
            assert reply.document.sha256 == hashlib.sha256(doc).hexdigest()
            assert [a.filename for a in reply.attachments] == ["purchase-order.pdf", "notes.txt"]
            assert [a.media_type for a in reply.attachments] == ["application/pdf", "text/plain"]
            ids[kind] = reply.invoice_id
            sent[kind] = {name: doc, **{f.filename: f.data for f in beside}, embedded[kind][0]: embedded[kind][1]}
        sent["facturx"]["factur-x.xml"] = pdf_xml
        events = await collect_until_final(status_follower, set(ids.values()))
        assert all(events[i][-1].status_code == 203 for i in ids.values()), events

        for kind, invoice_id in ids.items():
            invoice = await get_invoice(stack.status, invoice_id, caller_of(buyer))
            listed = {a.filename: a for a in invoice.attachments}
            assert invoice.document.filename == documents[kind][0]
            assert invoice.document.origin == common_pb2.FILE_ORIGIN_INVOICE
            assert listed["purchase-order.pdf"].origin == common_pb2.FILE_ORIGIN_SUBMITTED
            # Carried inside the invoice: extracted, archived and listed.
            inside = listed[embedded[kind][0]]
            assert inside.origin == common_pb2.FILE_ORIGIN_EMBEDDED
            assert inside.sha256 == hashlib.sha256(embedded[kind][1]).hexdigest()

            # The buyer downloads each file; every byte is what was sent.
            ref, original = await download(stack.ingest, invoice_id, caller=caller_of(buyer))
            assert original == documents[kind][1] and ref.sha256 == hashlib.sha256(original).hexdigest()
            for attachment in invoice.attachments:
                ref, data = await download(stack.ingest, invoice_id, attachment.filename, caller_of(buyer))
                assert data == sent[kind][attachment.filename], (kind, attachment.filename)
                assert ref.sha256 == attachment.sha256 == hashlib.sha256(data).hexdigest()
                assert ref.size_bytes == len(data)

            # Another company's buyer learns nothing, by name or by hash.
            for asked in ("", "notes.txt", invoice.attachments[0].sha256):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await download(stack.ingest, invoice_id, asked, caller_of(other))
                assert refused.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED)
                assert "purchase" not in (refused.value.details() or "")

        # The CLI's download writes the file after checking its hash.
        invoice_id = ids["facturx"]
        out = tmp_path / "po.pdf"
        done = invoicectl(
            "download", invoice_id, "--attachment", "purchase-order.pdf", "--out", str(out), account=buyer
        )
        assert done.returncode == 0, done.stderr
        assert out.read_bytes() == beside[0].data

        # Kafka holds references: no record of the journeys carries the
        # bytes, and each is small.
        for invoice_id in ids.values():
            for topic in (topics.RECEIVED, topics.VALIDATED, topics.ROUTED, topics.STATUS):
                for record in await records_for_key(stack.kafka, topic, invoice_id):
                    assert len(record.value) < MAX_RECORD_BYTES, (topic, len(record.value))
                    for data in sent[_kind(ids, invoice_id)].values():
                        assert data[:4096] not in record.value, topic
            (received,) = await records_for_key(stack.kafka, topics.RECEIVED, invoice_id)
            event = events_pb2.InvoiceReceived.FromString(received.value)
            assert not event.document and event.original.sha256
            (validated,) = await records_for_key(stack.kafka, topics.VALIDATED, invoice_id)
            assert not events_pb2.InvoiceValidated.FromString(validated.value).document
    finally:
        for account in (supplier, buyer, other):
            invoicectl("accounts", "delete", account["client_id"])


def _kind(ids: dict[str, str], invoice_id: str) -> str:
    return next(kind for kind, i in ids.items() if i == invoice_id)


async def _admin(stack: Stack) -> asyncpg.Connection:
    return await asyncpg.connect(stack.database_url)


async def _nothing_stored(stack: Stack, document: bytes, chunks: list[bytes]) -> None:
    """No receipt and no archived file for ``document``, and none of
    ``chunks`` stored, once no ingest transaction is left open (the server
    may still be rolling the upload back when the client has given up)."""
    conn = await _admin(stack)
    try:
        # Bounded poll: the rollback happens on the server's own time.
        for _ in range(100):
            open_ = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = 'ingest' AND state LIKE 'idle in transaction%'"
            )
            if open_ == 0:
                break
            await asyncio.sleep(0.1)
        assert open_ == 0, "the upload's transaction is still open"
        sha256 = hashlib.sha256(document).hexdigest()
        assert await conn.fetchval("SELECT count(*) FROM ingest.receipts WHERE sha256 = $1", sha256) == 0
        assert await conn.fetchval("SELECT count(*) FROM archive.documents WHERE sha256 = $1", sha256) == 0
        hashes = [hashlib.sha256(c).digest() for c in chunks]
        assert await conn.fetchval("SELECT count(*) FROM archive.chunks WHERE sha256 = ANY($1::bytea[])", hashes) == 0
    finally:
        await conn.close()


async def test_an_interrupted_upload_leaves_nothing_behind(stack: Stack) -> None:
    document, _ = invoice_from(fresh_siren())
    chunks = [os.urandom(MIB) for _ in range(3)]
    sent = asyncio.Event()

    async def requests() -> AsyncIterator[ingest_pb2.UploadInvoiceRequest]:
        yield ingest_pb2.UploadInvoiceRequest(file=ingest_pb2.UploadFile(filename="cut.xml"))
        yield ingest_pb2.UploadInvoiceRequest(chunk=document)
        yield ingest_pb2.UploadInvoiceRequest(file=ingest_pb2.UploadFile(filename="big.bin"))
        for chunk in chunks:
            yield ingest_pb2.UploadInvoiceRequest(chunk=chunk)
        sent.set()
        await asyncio.Event().wait()  # the connection drops here, mid-upload

    call = asyncio.ensure_future(upload(stack.ingest, requests()))
    await sent.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await _nothing_stored(stack, document, chunks)


async def test_an_upload_over_a_limit_is_refused_naming_it_and_stores_nothing(stack: Stack) -> None:
    document, _ = invoice_from(fresh_siren())
    too_big = os.urandom(10 * MIB + 1)  # max_attachment_bytes is 10 MiB
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await upload(stack.ingest, [UploadFile("over.xml", document), UploadFile("scan.tiff", too_big)])
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_attachment_bytes" in (refused.value.details() or "")
    assert "scan.tiff" in (refused.value.details() or "")
    await _nothing_stored(stack, document, [too_big[:MIB]])

    # A chunk over 1 MiB is refused as well.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await upload(stack.ingest, upload_requests([UploadFile("x.xml", document + b" " * MIB)], chunk=MIB + 10))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "chunk" in (refused.value.details() or "")


async def test_a_damaged_stored_chunk_is_refused_on_download_and_nothing_is_written(
    stack: Stack, status_follower: Any, tmp_path: Path
) -> None:
    document, _ = invoice_from(SAMPLE_SELLER)
    scan = os.urandom(2 * MIB + 100)
    reply = await upload(
        stack.ingest, [UploadFile(f"d-{uuid.uuid4().hex[:6]}.xml", document), UploadFile("s.bin", scan)]
    )
    await collect_until_final(status_follower, {reply.invoice_id})
    await tamper_with_chunks(
        stack.database_url, hashlib.sha256(scan).hexdigest(), "overlay(data PLACING '\\x00'::bytea FROM 5)", "seq = 1"
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await download(stack.ingest, reply.invoice_id, "s.bin")
    assert refused.value.code() == grpc.StatusCode.DATA_LOSS
    assert "damaged" in (refused.value.details() or "")
    out = tmp_path / "s.bin"
    done = invoicectl("download", reply.invoice_id, "--attachment", "s.bin", "--out", str(out))
    assert done.returncode != 0 and "damaged" in done.stderr
    assert not out.exists() and os.listdir(tmp_path) == []
    # The invoice document itself is intact and still served.
    _, original = await download(stack.ingest, reply.invoice_id)
    assert original == document


def _memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


async def test_a_100_mb_upload_streams_through_ingest_in_bounded_memory(stack: Stack, status_follower: Any) -> None:
    """An invoice with ten attachments of 10 MiB: ingest's peak memory grows
    by less than 64 MiB over its idle size, and no Kafka record of the
    journey exceeds 64 KiB."""
    pid = stack.service_pid("ingest")
    document, _ = invoice_from(SAMPLE_SELLER)
    attachments = [UploadFile(f"scan-{n:02d}.tiff", os.urandom(10 * MIB), "image/tiff") for n in range(10)]
    # The peak so far is forgotten (Linux: "5" resets VmHWM to VmRSS).
    with open(f"/proc/{pid}/clear_refs", "w") as clear:  # noqa: ASYNC230 - a procfs write, instant
        clear.write("5")
    idle = _memory_kib(pid, "VmRSS")
    reply = await upload(stack.ingest, [UploadFile("big-invoice.xml", document), *attachments])
    peak = _memory_kib(pid, "VmHWM")
    total = len(document) + sum(len(a.data) for a in attachments)
    assert total > 100 * 1000 * 1000
    assert peak - idle < 64 * 1024, f"ingest grew by {(peak - idle) / 1024:.1f} MiB for a {total / MIB:.0f} MiB upload"

    events = await collect_until_final(status_follower, {reply.invoice_id})
    assert events[reply.invoice_id][-1].status_code == 203
    for topic in (topics.RECEIVED, topics.VALIDATED, topics.ROUTED, topics.STATUS):
        for record in await records_for_key(stack.kafka, topic, reply.invoice_id):
            assert len(record.value) < MAX_RECORD_BYTES, (topic, len(record.value))
    # And the last attachment comes back whole.
    ref, data = await download(stack.ingest, reply.invoice_id, "scan-09.tiff")
    assert data == attachments[-1].data and ref.size_bytes == 10 * MIB
