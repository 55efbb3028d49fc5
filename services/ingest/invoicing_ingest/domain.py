"""Pure rules of submission: what is acceptable and what a receipt is."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp
from invoicing.v1 import events_pb2

from invoicing_common.archive import ORIGIN_INVOICE, FileRef
from invoicing_common.archive.model import sniff_media_type
from invoicing_common.auth.principal import ROLE_PLATFORM, Principal
from invoicing_common.ids import new_invoice_id, stage_event_id
from invoicing_common.platforms import Registry

MAX_FILENAME_CHARS = 255
MAX_IDEMPOTENCY_KEY_CHARS = 128


class SubmissionError(ValueError):
    """A request that can never succeed as sent; names the field at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class UnregisteredPlatform(Exception):
    """An account with the platform role that the registry does not name:
    it may not submit (as a platform or otherwise)."""

    def __init__(self) -> None:
        # The caller learns why, not which platforms or accounts this one knows.
        super().__init__(
            "this account has the platform role but is not registered as a platform this one exchanges invoices with"
        )


@dataclass(frozen=True)
class Submission:
    document: bytes
    filename: str
    idempotency_key: str | None
    # The authenticated account, and the SIRENs it acts for.
    submitter: str
    sha256: str
    submitter_sirens: frozenset[str] = frozenset()
    # Found from the content: the formats accepted are XML and PDF.
    media_type: str = ""
    # Streamed uploads: the document is already archived, and `document` is
    # empty; its size is the archived one.
    size_bytes: int = 0
    attachments: tuple[FileRef, ...] = ()
    # The platform that delivered it (its registry id), when the submitter
    # is another platform rather than a seller's account here.
    origin_platform: str = ""

    @property
    def original(self) -> FileRef:
        size = len(self.document) or self.size_bytes
        return FileRef(self.sha256, size, self.media_type, self.filename, ORIGIN_INVOICE)


@dataclass(frozen=True)
class Receipt:
    invoice_id: str
    received_at: datetime
    duplicate: bool
    event_id: str


def check_filename(filename: str, field: str = "filename") -> None:
    if len(filename) > MAX_FILENAME_CHARS:
        raise SubmissionError(field, f"{field} is longer than {MAX_FILENAME_CHARS} characters")
    if any(ord(c) < 32 or c == "\x7f" for c in filename):
        raise SubmissionError(field, f"{field} contains control characters")


def check_idempotency_key(idempotency_key: str) -> None:
    if len(idempotency_key) > MAX_IDEMPOTENCY_KEY_CHARS:
        raise SubmissionError(
            "idempotency_key", f"idempotency_key is longer than {MAX_IDEMPOTENCY_KEY_CHARS} characters"
        )
    if idempotency_key and not idempotency_key.isprintable():
        raise SubmissionError("idempotency_key", "idempotency_key contains non-printable characters")


def submitting_platform(submitter: Principal, registry: Registry) -> str:
    """The registry id of the platform submitting, or "" for an account of
    this platform's own users. A registered platform submits for sellers it
    authenticated itself: its token carries no SIRENs, and validate skips the
    seller-account check for what it delivers (origin_platform)."""
    if not submitter.has_role(ROLE_PLATFORM):
        return ""
    peer = registry.calling(submitter.client_id) if submitter.client_id else None
    if peer is None:
        raise UnregisteredPlatform()
    return peer.id


def check_submission(
    document: bytes,
    filename: str,
    idempotency_key: str,
    submitter: str,
    max_document_bytes: int,
    submitter_sirens: frozenset[str] = frozenset(),
    origin_platform: str = "",
) -> Submission:
    if not submitter:
        # The server's authentication guarantees one; never an anonymous scope.
        raise ValueError("a submission needs an authenticated submitter")
    if not document:
        raise SubmissionError("document", "document is empty")
    if len(document) > max_document_bytes:
        raise SubmissionError("document", f"document is {len(document)} bytes; the limit is {max_document_bytes} bytes")
    check_filename(filename)
    check_idempotency_key(idempotency_key)
    return Submission(
        document=document,
        filename=filename,
        idempotency_key=idempotency_key or None,
        submitter=submitter,
        sha256=hashlib.sha256(document).hexdigest(),
        submitter_sirens=submitter_sirens,
        media_type=sniff_media_type(document[:64]),
        size_bytes=len(document),
        origin_platform=origin_platform,
    )


def new_receipt(now: datetime) -> Receipt:
    invoice_id = new_invoice_id()
    return Receipt(
        invoice_id=invoice_id, received_at=now, duplicate=False, event_id=stage_event_id(invoice_id, "received")
    )


def received_event(submission: Submission, receipt: Receipt, trace_id: str) -> events_pb2.InvoiceReceived:
    received_at = Timestamp()
    received_at.FromDatetime(receipt.received_at)
    return events_pb2.InvoiceReceived(
        event_id=receipt.event_id,
        invoice=events_pb2.InvoiceRef(
            invoice_id=receipt.invoice_id,
            received_at=received_at,
            received_event_id=receipt.event_id,
            filename=submission.filename,
            submitter=submission.submitter,
            trace_id=trace_id,
            origin_platform=submission.origin_platform,
        ),
        sha256=submission.sha256,
        idempotency_key=submission.idempotency_key or "",
        submitter_sirens=sorted(submission.submitter_sirens),
        # The claim check: the bytes are in the archive, committed with the
        # receipt; the record says where.
        original=submission.original.to_proto(),
        attachments=[ref.to_proto() for ref in submission.attachments],
    )
