"""The upload of an invoice to another platform, against a real gRPC server
in this process (the archive stood in for by its bytes in memory): the
files arrive header first with their hashes and the key once; a refusal
before the upload ended is the server's own status, not grpc.aio's
INTERNAL (grpc/grpc#36066), so the delivery stage decides on the right
code; a file the archive cannot serve cancels the call, and the server
never has it whole."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import grpc
import pytest
from invoicing.v1 import ingest_pb2, ingest_pb2_grpc

from invoicing_common.archive import ORIGIN_INVOICE, ORIGIN_SUBMITTED, DocumentDamaged, FileRef
from invoicing_common.kafka.errors import Fault
from invoicing_route.delivery_domain import Parcel, fault_of, refusal
from invoicing_route.peers import _messages, _upload

DOCUMENT = b"<Invoice>" + b"x" * (2 * 1024 * 1024 + 5) + b"</Invoice>"
ATTACHMENT = b"%PDF-1.4 delivery note"


def _ref(data: bytes, name: str, origin: int, media_type: str) -> FileRef:
    return FileRef(hashlib.sha256(data).hexdigest(), len(data), media_type, name, origin)


PARCEL = Parcel(
    invoice_id="inv-1",
    filename="facture.xml",
    document=_ref(DOCUMENT, "facture.xml", ORIGIN_INVOICE, "application/xml"),
    attachments=(_ref(ATTACHMENT, "bon.pdf", ORIGIN_SUBMITTED, "application/pdf"),),
)


class _Archive:
    """The archive's stream(), from memory. A damaged file fails once its
    chunks are out, as the archive's final check of a file does."""

    def __init__(self, damaged: str = "") -> None:
        self._files = {PARCEL.document.sha256: DOCUMENT, PARCEL.attachments[0].sha256: ATTACHMENT}
        self._damaged = damaged

    async def stream(self, sha256: str) -> AsyncIterator[bytes]:
        data = self._files[sha256]
        for start in range(0, len(data), 1024 * 1024):
            yield data[start : start + 1024 * 1024]
        if sha256 == self._damaged:
            raise DocumentDamaged(sha256, "its bytes do not hash to its address")


class _Ingest(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(self, refuse: grpc.StatusCode | None = None) -> None:
        self._refuse = refuse
        # What the server had when the stream ended.
        self.received: list[tuple[ingest_pb2.UploadFile, str, bytes]] = []

    async def UploadInvoice(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[ingest_pb2.UploadInvoiceRequest], context: grpc.aio.ServicerContext
    ) -> ingest_pb2.SubmitInvoiceResponse:
        files: list[tuple[ingest_pb2.UploadFile, str, bytearray]] = []
        async for message in request_iterator:
            if self._refuse is not None:
                await context.abort(self._refuse, "over the limit of 1 byte")
            if message.WhichOneof("part") == "file":
                files.append((message.file, message.idempotency_key, bytearray()))
            else:
                files[-1][2].extend(message.chunk)
        self.received = [(header, key, bytes(data)) for header, key, data in files]
        return ingest_pb2.SubmitInvoiceResponse(invoice_id="remote-1")

    async def SubmitInvoice(  # noqa: N802 - gRPC method name
        self, request: ingest_pb2.SubmitInvoiceRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.SubmitInvoiceResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "uploads only")
        raise AssertionError("unreachable: abort raises")

    async def SubmitInvoices(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[ingest_pb2.SubmitInvoiceRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ingest_pb2.SubmitInvoiceResponse]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "uploads only")
        yield ingest_pb2.SubmitInvoiceResponse()  # unreachable: abort raises


async def _send(ingest: _Ingest, archive: _Archive) -> ingest_pb2.SubmitInvoiceResponse:
    server = grpc.aio.server()
    ingest_pb2_grpc.add_IngestServiceServicer_to_server(ingest, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        return await _upload(stub, _messages(PARCEL, archive), (("authorization", "Bearer t"),), 30)  # type: ignore[arg-type]
    finally:
        channel.close()
        await server.stop(None)


async def test_the_files_arrive_whole_header_first_with_the_key_once() -> None:
    ingest = _Ingest()
    receipt = await _send(ingest, _Archive())
    assert receipt.invoice_id == "remote-1"
    [(document, key, data), (attachment, no_key, attached)] = ingest.received
    assert (document.filename, document.media_type, key) == ("facture.xml", "", "inv-1")
    assert (document.sha256, data) == (PARCEL.document.sha256, DOCUMENT)
    assert (attachment.filename, attachment.media_type, no_key) == ("bon.pdf", "application/pdf", "")
    assert (attachment.sha256, attached) == (PARCEL.attachments[0].sha256, ATTACHMENT)


@pytest.mark.parametrize(
    ("code", "fault"),
    [(grpc.StatusCode.INVALID_ARGUMENT, Fault.PERMANENT), (grpc.StatusCode.RESOURCE_EXHAUSTED, Fault.TRANSIENT)],
)
async def test_a_refusal_before_the_end_is_the_servers_own_status(code: grpc.StatusCode, fault: Fault) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        await _send(_Ingest(refuse=code), _Archive())
    assert fault_of(refused.value) is fault
    reason = f"platform peer refused the invoice: {code.name}: over the limit of 1 byte"
    assert str(refusal("peer", refused.value)) == reason


async def test_a_file_the_archive_cannot_serve_cancels_the_upload() -> None:
    ingest = _Ingest()
    with pytest.raises(DocumentDamaged):
        await _send(ingest, _Archive(damaged=PARCEL.document.sha256))
    # Cancelled before its end. A server may see the stream end as if it
    # were closed: even then it never has the document whole (its last
    # chunk is held back until the archive has served all of it; ingest
    # refuses bytes short of the declared hash), nor the attachment.
    assert len(ingest.received) <= 1
    assert all(data != DOCUMENT for _header, _key, data in ingest.received)
