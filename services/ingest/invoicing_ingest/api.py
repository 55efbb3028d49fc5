"""IngestService gRPC servicer: thin, delegates to domain and repository.

The submitter is the authenticated account (its token's subject), never
something the request says: receipts, idempotency keys and byte-identical
retries are scoped to it, and the SIRENs it acts for travel with the
invoice so that validate can check the seller against them.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from invoicing.v1 import ingest_pb2, ingest_pb2_grpc
from opentelemetry import trace

from invoicing_common import topics
from invoicing_common.auth.principal import ROLE_SUPPLIER, Principal, current_principal
from invoicing_common.kafka.errors import is_transient
from invoicing_common.kafka.outbox import OutboxMessage
from invoicing_common.telemetry import SUBMISSIONS, current_trace_id, record_invoice
from invoicing_ingest.domain import Receipt, SubmissionError, check_submission, new_receipt, received_event
from invoicing_ingest.repository import ConflictingRetry, ReceiptRepository
from invoicing_ingest.settings import IngestSettings

log = logging.getLogger(__name__)

_SERVICE = ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name
# Who may call what (enforced by the server's auth interceptor).
ACCESS_POLICY: dict[str, frozenset[str]] = {
    f"/{_SERVICE}/SubmitInvoice": frozenset({ROLE_SUPPLIER}),
    f"/{_SERVICE}/SubmitInvoices": frozenset({ROLE_SUPPLIER}),
}
# Counted against the account's concurrent streams (QUOTA_STREAMS).
STREAMING_METHODS = frozenset({f"/{_SERVICE}/SubmitInvoices"})


class RequestError(Exception):
    def __init__(self, code: grpc.StatusCode, field: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.field = field
        self.message = message


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(self, settings: IngestSettings, receipts: ReceiptRepository) -> None:
        self._settings = settings
        self._receipts = receipts

    async def _submit(
        self, request: ingest_pb2.SubmitInvoiceRequest, submitter: Principal
    ) -> ingest_pb2.SubmitInvoiceResponse:
        try:
            submission = check_submission(
                request.document,
                request.filename,
                request.idempotency_key,
                submitter.subject,
                self._settings.max_document_bytes,
                submitter.sirens,
            )
        except SubmissionError as exc:
            SUBMISSIONS.add(1, {"outcome": "invalid"})
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, exc.field, exc.message) from exc
        trace_id = current_trace_id()
        candidate = new_receipt(datetime.now(UTC))

        def announce(receipt: Receipt) -> OutboxMessage:
            event = received_event(submission, receipt, trace_id)
            return OutboxMessage(topics.RECEIVED, receipt.invoice_id.encode(), event.SerializeToString())

        try:
            # Committed with its `received` record (the outbox): the answer
            # means both are durable.
            receipt = await self._receipts.store(submission, candidate, announce)
        except ConflictingRetry as exc:
            SUBMISSIONS.add(1, {"outcome": "conflict"})
            # Keys are scoped to the account: the invoice named is its own.
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "idempotency_key",
                f"idempotency_key {submission.idempotency_key!r} was already used for invoice {exc.invoice_id}"
                " with a different document",
            ) from exc
        except Exception as exc:
            if not is_transient(exc):
                raise
            # Nothing was kept (the transaction did not commit), or it was
            # and the retry finds it: a retry with the same key is safe.
            SUBMISSIONS.add(1, {"outcome": "unavailable"})
            log.warning("submission not stored: %s", exc)
            raise RequestError(
                grpc.StatusCode.UNAVAILABLE, "", f"storage unavailable ({type(exc).__name__}); retry with the same key"
            ) from exc
        outcome = "duplicate" if receipt.duplicate else "accepted"
        SUBMISSIONS.add(1, {"outcome": outcome})
        span = trace.get_current_span()
        record_invoice(span, receipt.invoice_id)
        span.set_attribute("invoicing.duplicate", receipt.duplicate)
        log.info("invoice %s", outcome, extra={"invoice_id": receipt.invoice_id})
        received_at = Timestamp()
        received_at.FromDatetime(receipt.received_at)
        return ingest_pb2.SubmitInvoiceResponse(
            invoice_id=receipt.invoice_id, received_at=received_at, duplicate=receipt.duplicate
        )

    async def SubmitInvoice(  # noqa: N802 - gRPC method name
        self, request: ingest_pb2.SubmitInvoiceRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.SubmitInvoiceResponse:
        try:
            return await self._submit(request, current_principal())
        except RequestError as exc:
            await context.abort(exc.code, f"{exc.field}: {exc.message}" if exc.field else exc.message)
            raise  # unreachable: abort raises

    async def SubmitInvoices(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[ingest_pb2.SubmitInvoiceRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ingest_pb2.SubmitInvoiceResponse]:
        submitter = current_principal()
        async for request in request_iterator:
            try:
                yield await self._submit(request, submitter)
            except RequestError as exc:
                # One bad document must not end the batch: report it in place.
                yield ingest_pb2.SubmitInvoiceResponse(
                    error=ingest_pb2.SubmitError(code=exc.code.name, field=exc.field, message=exc.message)
                )


def registrar(servicer: IngestServicer) -> Callable[[grpc.aio.Server], list[str]]:
    def register(server: grpc.aio.Server) -> list[str]:
        ingest_pb2_grpc.add_IngestServiceServicer_to_server(servicer, server)
        return [ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name]

    return register
