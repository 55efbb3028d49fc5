"""IngestService gRPC servicer: thin, delegates to domain and repository.

The submitter is the authenticated account (its token's subject), never
something the request says: receipts, idempotency keys and byte-identical
retries are scoped to it, and the SIRENs it acts for travel with the
invoice so that validate can check the seller against them. Another
platform (role platform, registered in PLATFORMS_FILE) submits for the
sellers it authenticated: its invoices carry its id (origin_platform).
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
from invoicing_common.auth.principal import (
    ROLE_BUYER,
    ROLE_OPERATOR,
    ROLE_PLATFORM,
    ROLE_SUPPLIER,
    Principal,
    current_principal,
)
from invoicing_common.kafka.errors import is_transient
from invoicing_common.kafka.outbox import OutboxMessage
from invoicing_common.platforms import Registry
from invoicing_common.telemetry import SUBMISSIONS, current_trace_id, record_invoice
from invoicing_ingest.documents import DocumentServicer
from invoicing_ingest.domain import (
    Receipt,
    Submission,
    SubmissionError,
    UnregisteredPlatform,
    check_submission,
    new_receipt,
    received_event,
    submitting_platform,
)
from invoicing_ingest.errors import RequestError
from invoicing_ingest.repository import ConflictingRetry, ReceiptRepository
from invoicing_ingest.settings import IngestSettings
from invoicing_ingest.uploads import Uploader

log = logging.getLogger(__name__)

_SERVICE = ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name
_DOCUMENTS = ingest_pb2.DESCRIPTOR.services_by_name["DocumentService"].full_name
# Who may call what (enforced by the server's auth interceptor). Which
# invoices' files a caller may read is decided per invoice (documents.py).
# A platform account submits the invoices another platform delivers here
# (and must be registered: submitting_platform).
ACCESS_POLICY: dict[str, frozenset[str]] = {
    f"/{_SERVICE}/SubmitInvoice": frozenset({ROLE_SUPPLIER, ROLE_PLATFORM}),
    f"/{_SERVICE}/SubmitInvoices": frozenset({ROLE_SUPPLIER, ROLE_PLATFORM}),
    f"/{_SERVICE}/UploadInvoice": frozenset({ROLE_SUPPLIER, ROLE_PLATFORM}),
    f"/{_DOCUMENTS}/GetInvoiceDocument": frozenset({ROLE_SUPPLIER, ROLE_BUYER, ROLE_OPERATOR}),
}
# Counted against the account's concurrent streams (QUOTA_STREAMS).
STREAMING_METHODS = frozenset(
    {f"/{_SERVICE}/SubmitInvoices", f"/{_SERVICE}/UploadInvoice", f"/{_DOCUMENTS}/GetInvoiceDocument"}
)


def _announcer(submission: Submission, trace_id: str) -> Callable[[Receipt], OutboxMessage]:
    def announce(receipt: Receipt) -> OutboxMessage:
        event = received_event(submission, receipt, trace_id)
        return OutboxMessage(topics.RECEIVED, receipt.invoice_id.encode(), event.SerializeToString())

    return announce


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(
        self, settings: IngestSettings, receipts: ReceiptRepository, uploader: Uploader, platforms: Registry
    ) -> None:
        self._settings = settings
        self._receipts = receipts
        self._uploader = uploader
        self._platforms = platforms

    def _origin(self, submitter: Principal) -> str:
        """The submitting platform's id ("" for a seller's account)."""
        try:
            return submitting_platform(submitter, self._platforms)
        except UnregisteredPlatform as exc:
            SUBMISSIONS.add(1, {"outcome": "forbidden"})
            log.warning("submission refused: client %s: %s", submitter.client_id or "(none)", exc)
            raise RequestError(grpc.StatusCode.PERMISSION_DENIED, "", str(exc)) from exc

    async def _submit(
        self, request: ingest_pb2.SubmitInvoiceRequest, submitter: Principal, origin_platform: str
    ) -> ingest_pb2.SubmitInvoiceResponse:
        try:
            submission = check_submission(
                request.document,
                request.filename,
                request.idempotency_key,
                submitter.subject,
                self._settings.max_document_bytes,
                submitter.sirens,
                origin_platform,
            )
        except SubmissionError as exc:
            SUBMISSIONS.add(1, {"outcome": "invalid"})
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, exc.field, exc.message) from exc
        candidate = new_receipt(datetime.now(UTC))
        try:
            # Committed with its document and its `received` record (the
            # outbox): the answer means all are durable.
            receipt = await self._receipts.store(submission, candidate, _announcer(submission, current_trace_id()))
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
        return self._answer(receipt, submission)

    def _answer(self, receipt: Receipt, submission: Submission) -> ingest_pb2.SubmitInvoiceResponse:
        outcome = "duplicate" if receipt.duplicate else "accepted"
        SUBMISSIONS.add(1, {"outcome": outcome})
        span = trace.get_current_span()
        record_invoice(span, receipt.invoice_id)
        span.set_attribute("invoicing.duplicate", receipt.duplicate)
        log.info("invoice %s", outcome, extra={"invoice_id": receipt.invoice_id})
        received_at = Timestamp()
        received_at.FromDatetime(receipt.received_at)
        return ingest_pb2.SubmitInvoiceResponse(
            invoice_id=receipt.invoice_id,
            received_at=received_at,
            duplicate=receipt.duplicate,
            document=submission.original.to_proto(),
            attachments=[ref.to_proto() for ref in submission.attachments],
        )

    async def UploadInvoice(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[ingest_pb2.UploadInvoiceRequest], context: grpc.aio.ServicerContext
    ) -> ingest_pb2.SubmitInvoiceResponse:
        submitter = current_principal()
        trace_id = current_trace_id()
        try:
            origin_platform = self._origin(submitter)
        except RequestError as exc:
            await context.abort(exc.code, exc.details)
        try:
            uploaded = await self._uploader.upload(
                request_iterator, submitter, lambda submission: _announcer(submission, trace_id), origin_platform
            )
        except RequestError as exc:
            SUBMISSIONS.add(1, {"outcome": "invalid"})
            await context.abort(exc.code, exc.details)
        except ConflictingRetry as exc:
            SUBMISSIONS.add(1, {"outcome": "conflict"})
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"idempotency_key: already used for invoice {exc.invoice_id} with a different document",
            )
        except Exception as exc:
            if not is_transient(exc):
                raise
            SUBMISSIONS.add(1, {"outcome": "unavailable"})
            log.warning("upload not stored: %s", exc)
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"storage unavailable ({type(exc).__name__}); nothing was stored, upload again with the same key",
            )
        return self._answer(uploaded.receipt, uploaded.submission)

    async def SubmitInvoice(  # noqa: N802 - gRPC method name
        self, request: ingest_pb2.SubmitInvoiceRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.SubmitInvoiceResponse:
        submitter = current_principal()
        try:
            return await self._submit(request, submitter, self._origin(submitter))
        except RequestError as exc:
            await context.abort(exc.code, exc.details)
            raise  # unreachable: abort raises

    async def SubmitInvoices(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[ingest_pb2.SubmitInvoiceRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ingest_pb2.SubmitInvoiceResponse]:
        submitter = current_principal()
        try:
            origin_platform = self._origin(submitter)
        except RequestError as exc:
            # The account, not one document: the whole stream is refused.
            await context.abort(exc.code, exc.details)
        async for request in request_iterator:
            try:
                yield await self._submit(request, submitter, origin_platform)
            except RequestError as exc:
                # One bad document must not end the batch: report it in place.
                yield ingest_pb2.SubmitInvoiceResponse(
                    error=ingest_pb2.SubmitError(code=exc.code.name, field=exc.field, message=exc.message)
                )


def registrar(servicer: IngestServicer, documents: DocumentServicer) -> Callable[[grpc.aio.Server], list[str]]:
    def register(server: grpc.aio.Server) -> list[str]:
        ingest_pb2_grpc.add_IngestServiceServicer_to_server(servicer, server)
        ingest_pb2_grpc.add_DocumentServiceServicer_to_server(documents, server)
        return [_SERVICE, _DOCUMENTS]

    return register
