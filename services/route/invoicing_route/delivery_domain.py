"""Pure decisions of the delivery stage: which routed invoices go to another
platform, what is sent, which failures are waited out and which hold the
invoice, and the event that records the destination's acknowledgement."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from invoicing.v1 import events_pb2, ingest_pb2

from invoicing_common.archive import ORIGIN_EMBEDDED, FileRef
from invoicing_common.auth.client import TokenError
from invoicing_common.ids import stage_event_id
from invoicing_common.kafka.errors import Fault, PermanentError, classify

DELIVERED_STAGE: Final = "delivered"

# SubmitInvoice carries the whole document in one message; above gRPC's
# default message limit (which a destination may keep) UploadInvoice
# streams it in chunks instead.
SUBMIT_MAX_BYTES: Final = 4 * 1024 * 1024

# What the destination (or the network to it) says when it cannot take the
# invoice now but may later. The same idempotency key on every attempt makes
# a retry after a lost answer harmless. CANCELLED: a destination stopping
# cancels the calls in flight. ABORTED: gRPC's own advice is to retry.
RETRIED_CODES: Final = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
    }
)


class UnknownPlatform(PermanentError):
    """The directory names a platform this one has no registry entry for:
    the invoice is held (DLQ) until the registry knows it."""

    def __init__(self, platform_id: str) -> None:
        super().__init__(
            f"destination platform {platform_id!r} is not in this platform's registry (PLATFORMS_FILE)"
            if platform_id
            else "routed to another platform, but the routed event names none"
        )
        self.platform_id = platform_id


class DeliveryRefused(PermanentError):
    """The destination refused the invoice for a reason a retry would meet
    again; the message names the platform, the code and its reason."""


def to_deliver(routed: events_pb2.InvoiceRouted, platform_id: str) -> bool:
    """Whether this routed event is an invoice for another platform: routed
    (a refusal ends here, status records it) and not to a buyer this
    platform serves (``local_delivery``, or its own id named again)."""
    return (
        routed.outcome == events_pb2.ROUTING_OUTCOME_ROUTED
        and not routed.local_delivery
        and routed.destination_platform != platform_id
    )


@dataclass(frozen=True)
class Parcel:
    """What goes to the destination: the invoice's document and the files
    its seller sent beside it, under this platform's invoice id as the
    idempotency key."""

    invoice_id: str
    filename: str
    document: FileRef
    attachments: tuple[FileRef, ...] = ()

    @property
    def streamed(self) -> bool:
        """UploadInvoice (attachments, or a large document), else SubmitInvoice."""
        return bool(self.attachments) or self.document.size_bytes > SUBMIT_MAX_BYTES

    @property
    def idempotency_key(self) -> str:
        return self.invoice_id


def parcel_of(routed: events_pb2.InvoiceRouted) -> Parcel:
    """The parcel a routed event describes. Files extracted from the
    invoice (origin EMBEDDED) are not sent: they travel inside the document,
    and the destination extracts them again. An invoice is never sent back
    to the platform it came from: the two directories disagree on its
    buyer, and an operator must decide (it is held)."""
    origin = routed.invoice.origin_platform
    if origin and origin == routed.destination_platform:
        raise PermanentError(
            f"routed back to platform {origin}, which delivered it: the directories of the two platforms"
            " disagree on the buyer's platform"
        )
    if not routed.original.sha256:
        raise PermanentError(
            "the routed event names no archived document (written by a route older than the delivery stage); "
            "replay the invoice's validated record to route it again"
        )
    document = FileRef.from_proto(routed.original)
    return Parcel(
        invoice_id=routed.invoice.invoice_id,
        filename=routed.invoice.filename or document.filename,
        document=document,
        attachments=tuple(FileRef.from_proto(a) for a in routed.attachments if a.origin != ORIGIN_EMBEDDED),
    )


def rpc_status(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """The status code and details of a failed call (grpc.aio's errors and
    the synchronous API's alike), or None for any other failure."""
    code, details = getattr(exc, "code", None), getattr(exc, "details", None)
    if not isinstance(exc, grpc.RpcError) or not callable(code):
        return None
    found = code()
    if not isinstance(found, grpc.StatusCode):
        return None
    return found, (str(details() or "") if callable(details) else "")


def fault_of(exc: BaseException) -> Fault:
    """TRANSIENT when waiting may cure it: a retried gRPC code, the token
    endpoint unreachable or unwell, the archive's database or the network
    away. Anything else is the invoice's or the configuration's, and holds it."""
    status = rpc_status(exc)
    if status is not None:
        return Fault.TRANSIENT if status[0] in RETRIED_CODES else Fault.PERMANENT
    if isinstance(exc, TokenError):
        return Fault.TRANSIENT if exc.transient else Fault.PERMANENT
    return classify(exc)


def failure_reason(exc: BaseException) -> str:
    """A short label of a failure, for metrics and logs (a gRPC code name,
    "token", or the exception's type)."""
    status = rpc_status(exc)
    if status is not None:
        return str(status[0].name)
    if isinstance(exc, TokenError):
        return "token"
    return type(exc).__name__


def refusal(platform_id: str, exc: BaseException) -> BaseException:
    """What a permanent failure is raised as: a refusal by the destination
    or its token endpoint becomes a DeliveryRefused that says so (the dead
    letter's reason); any other failure keeps its own type and message."""
    status = rpc_status(exc)
    if status is not None:
        return DeliveryRefused(f"platform {platform_id} refused the invoice: {status[0].name}: {status[1]}")
    if isinstance(exc, TokenError):
        return DeliveryRefused(f"platform {platform_id}: no access token: {exc}")
    return exc


def delivered_event(
    routed: events_pb2.InvoiceRouted,
    receipt: ingest_pb2.SubmitInvoiceResponse,
    attempts: int,
    acknowledged_at: datetime,
) -> events_pb2.InvoiceDelivered:
    """The record of the destination's acknowledgement: its receipt says
    the invoice is durable there, under its own id. The event id is the
    stage's, so a redelivery (the peer answering ``duplicate``) repeats it."""
    if not receipt.invoice_id or receipt.HasField("error"):
        detail = f"{receipt.error.code}: {receipt.error.message}" if receipt.HasField("error") else "no invoice id"
        raise DeliveryRefused(f"platform {routed.destination_platform} answered without a receipt ({detail})")
    at = Timestamp()
    at.FromDatetime(acknowledged_at)
    return events_pb2.InvoiceDelivered(
        event_id=stage_event_id(routed.invoice.invoice_id, DELIVERED_STAGE),
        invoice=routed.invoice,
        destination_platform=routed.destination_platform,
        remote_invoice_id=receipt.invoice_id,
        duplicate=receipt.duplicate,
        acknowledged_at=at,
        attempts=attempts,
    )
