"""DocumentService: the archive's files, for those who may see the invoice.

Who may see an invoice is the status service's decision (its access rules
know the seller's and buyer's companies); this service asks it, with the
caller's own token, and so cannot widen them. The answer also names the
invoice's files, so a caller can only ever read files of invoices it sees.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
from invoicing.v1 import common_pb2, ingest_pb2, ingest_pb2_grpc, status_pb2, status_pb2_grpc
from mode import Service
from opentelemetry import trace

from invoicing_common.archive import DocumentDamaged, DocumentMissing
from invoicing_common.archive.postgres import PostgresArchive
from invoicing_common.auth.client import secure_channel
from invoicing_common.telemetry import record_invoice

log = logging.getLogger(__name__)

# What the status service answers that the caller should hear as it is.
_PASSED_ON = frozenset({grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT})


def choose(invoice: status_pb2.GetInvoiceResponse, attachment: str) -> common_pb2.DocumentRef | str:
    """The file asked for, or why there is none."""
    if not attachment:
        if not invoice.document.sha256:
            return f"invoice {invoice.invoice_id} has no archived document (it was received before the archive)"
        return invoice.document
    matches = [a for a in invoice.attachments if attachment in (a.filename, a.sha256)]
    if not matches:
        return f"invoice {invoice.invoice_id} has no attachment named {attachment[:255]!r}"
    if len({m.sha256 for m in matches}) > 1:
        return f"invoice {invoice.invoice_id} has several attachments named {attachment[:255]!r}; ask by SHA-256"
    return matches[0]


class DocumentServicer(ingest_pb2_grpc.DocumentServiceServicer, Service):
    """Also a service: its channel to status closes with ingest."""

    def __init__(self, archive: PostgresArchive, status_address: str, status_ca_file: str | None) -> None:
        Service.__init__(self)
        self._archive = archive
        self._status_address = status_address
        self._status_ca_file = status_ca_file
        self._channel: grpc.aio.Channel | None = None

    def _status(self) -> status_pb2_grpc.StatusServiceStub:
        if self._channel is None:
            # No call credentials of its own: each call carries its caller's.
            self._channel = secure_channel(self._status_address, None, self._status_ca_file)
        return status_pb2_grpc.StatusServiceStub(self._channel)

    async def on_stop(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def GetInvoiceDocument(  # noqa: N802 - gRPC method name
        self, request: ingest_pb2.GetInvoiceDocumentRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ingest_pb2.GetInvoiceDocumentResponse]:
        record_invoice(trace.get_current_span(), request.invoice_id)
        token = [(k, v) for k, v in context.invocation_metadata() or () if k == "authorization"]
        try:
            invoice = await self._status().GetInvoice(
                status_pb2.GetInvoiceRequest(invoice_id=request.invoice_id), metadata=token, timeout=10.0
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _PASSED_ON:
                await context.abort(exc.code(), exc.details() or "")
            log.warning("status service did not answer: %s %s", exc.code().name, exc.details())
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the invoice's status could not be read; retry")
        chosen = choose(invoice, request.attachment)
        if isinstance(chosen, str):
            await context.abort(grpc.StatusCode.NOT_FOUND, chosen)
        assert not isinstance(chosen, str)
        first = True
        try:
            async for chunk in self._archive.stream(chosen.sha256):
                if first:
                    yield ingest_pb2.GetInvoiceDocumentResponse(document=chosen)
                    first = False
                yield ingest_pb2.GetInvoiceDocumentResponse(chunk=chunk)
            if first:
                yield ingest_pb2.GetInvoiceDocumentResponse(document=chosen)
        except DocumentDamaged as exc:
            # Loud for the operators; the caller learns only that it is damaged.
            log.error("%s", exc, extra={"invoice_id": request.invoice_id})
            await context.abort(
                grpc.StatusCode.DATA_LOSS,
                f"the stored file {chosen.sha256} is damaged and is not served; discard any part received",
            )
        except DocumentMissing as exc:
            log.error("%s", exc, extra={"invoice_id": request.invoice_id})
            await context.abort(grpc.StatusCode.DATA_LOSS, f"the stored file {chosen.sha256} is missing")
