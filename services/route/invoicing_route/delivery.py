"""The delivery stage: routed -> delivered, for invoices whose buyer is on
another platform (the four-corner model: docs/reform.md, "Platform to platform").

A consumer group of its own (``<service>-delivery``) reads the routed
topic. Each invoice routed elsewhere is read from the archive and sent to
the destination platform's IngestService as this platform's account there,
with this platform's invoice id as the idempotency key: however many
attempts it takes, the destination keeps one invoice. A failure that may
pass is retried with a growing wait, for as long as it takes; the record
stays uncommitted meanwhile, so a restart resumes it. A refusal that a
retry would meet again raises: the record goes to the DLQ and its invoice
is held, for an operator. Once the destination's receipt is in hand, the
InvoiceDelivered record says so (status records 202).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from invoicing.v1 import events_pb2, ingest_pb2
from opentelemetry import trace

from invoicing_common import topics
from invoicing_common.archive.postgres import PostgresArchive
from invoicing_common.kafka import Record, StreamApp, backoff_delays, decode_event, send
from invoicing_common.kafka.errors import Fault
from invoicing_common.platforms import Peer, Registry
from invoicing_common.telemetry import COUNT_BUCKETS, meter, record_invoice, tracer
from invoicing_route.delivery_domain import (
    Parcel,
    UnknownPlatform,
    delivered_event,
    failure_reason,
    fault_of,
    parcel_of,
    refusal,
    to_deliver,
)
from invoicing_route.peers import PeerLinks
from invoicing_route.settings import RouteSettings

log = logging.getLogger(__name__)

DELIVERIES = meter().create_counter(
    "invoicing.delivery.deliveries",
    unit="{invoice}",
    description="Invoices handed to another platform, by destination platform and outcome"
    " (delivered, duplicate: the destination had it already, refused: held in the DLQ)",
)
# Each attempt, as it ends: a growing count of outcome=retry while nothing
# is delivered is a destination (or its token endpoint) down.
DELIVERY_ATTEMPTS = meter().create_counter(
    "invoicing.delivery.attempts",
    unit="{attempt}",
    description="Delivery attempts, by destination platform and outcome (delivered, retry, refused);"
    " retries also by reason (a gRPC code, token, or the failure's type)",
)
ATTEMPTS_PER_DELIVERY = meter().create_histogram(
    "invoicing.delivery.attempts_per_delivery",
    unit="{attempt}",
    description="Attempts an acknowledged delivery took, by destination platform",
    explicit_bucket_boundaries_advisory=COUNT_BUCKETS,
)

Pause = Callable[[float], Awaitable[None]]


class Deliverer:
    """Attempts one parcel until the destination acknowledges it or refuses
    it for good."""

    def __init__(self, settings: RouteSettings, links: PeerLinks, archive: PostgresArchive, pause: Pause) -> None:
        self._settings = settings
        self._links = links
        self._archive = archive
        self._pause = pause

    async def deliver(self, peer: Peer, parcel: Parcel) -> tuple[ingest_pb2.SubmitInvoiceResponse, int]:
        """The destination's receipt and the attempts it took. Raises what
        holds the invoice (a refusal, a file the archive cannot serve)."""
        s = self._settings
        delays = backoff_delays(s.delivery_backoff_initial_seconds, s.delivery_backoff_max_seconds)
        span = trace.get_current_span()
        attempts = 0
        while True:
            attempts += 1
            try:
                receipt = await self._links.submit(peer, parcel, self._archive, s.delivery_call_timeout_seconds)
                DELIVERY_ATTEMPTS.add(1, {"platform": peer.id, "outcome": "delivered"})
                return receipt, attempts
            except Exception as exc:  # wait it out, or hold the invoice
                reason = failure_reason(exc)
                if fault_of(exc) is Fault.PERMANENT:
                    DELIVERY_ATTEMPTS.add(1, {"platform": peer.id, "outcome": "refused", "reason": reason})
                    refused = refusal(peer.id, exc)
                    if refused is exc:
                        raise
                    raise refused from exc
                delay = next(delays)
                DELIVERY_ATTEMPTS.add(1, {"platform": peer.id, "outcome": "retry", "reason": reason})
                span.add_event("delivery retried", {"attempt": attempts, "reason": reason, "delay_s": delay})
                log.warning(
                    "delivery to platform %s failed (attempt %d: %s), retrying in %.1fs: %s",
                    peer.id, attempts, reason, delay, exc,
                    extra={"invoice_id": parcel.invoice_id},
                )  # fmt: skip
            await self._pause(delay)


def register(app: StreamApp, settings: RouteSettings, registry: Registry, deliverer: Deliverer) -> None:
    """``app``: the delivery stage's own stream app (consumer group
    ``settings.delivery_group``), beside the routing stage's."""
    delivered = app.topic(topics.DELIVERED)

    async def handle(record: Record) -> None:
        # Only those `wanted` selects (below) reach here.
        routed = decode_event(record, events_pb2.InvoiceRouted)
        invoice_id = routed.invoice.invoice_id
        destination = routed.destination_platform
        with tracer().start_as_current_span("deliver invoice") as span:
            record_invoice(span, invoice_id)
            span.set_attribute("invoicing.delivery.destination_platform", destination)
            try:
                peer = registry.get(destination)
                if peer is None:
                    raise UnknownPlatform(destination)
                receipt, attempts = await deliverer.deliver(peer, parcel_of(routed))
                out = delivered_event(routed, receipt, attempts, datetime.now(UTC))
            except Exception as exc:
                if fault_of(exc) is Fault.PERMANENT:
                    # The runtime dead-letters the record (the invoice is held).
                    DELIVERIES.add(1, {"platform": destination, "outcome": "refused"})
                raise
            DELIVERIES.add(1, {"platform": destination, "outcome": "duplicate" if out.duplicate else "delivered"})
            ATTEMPTS_PER_DELIVERY.record(attempts, {"platform": destination})
            span.set_attributes(
                {
                    "invoicing.delivery.attempts": attempts,
                    "invoicing.delivery.duplicate": out.duplicate,
                    "invoicing.delivery.remote_invoice_id": out.remote_invoice_id,
                }
            )
        log.info(
            "delivered to platform %s as %s after %d attempt(s)%s",
            destination, out.remote_invoice_id, attempts, " (it had it already)" if out.duplicate else "",
            extra={"invoice_id": invoice_id},
        )  # fmt: skip
        await send(delivered, invoice_id, out.SerializeToString(), out.event_id)

    def wanted(record: Record) -> bool:
        # Most routed invoices are refused or stay on this platform: passed
        # over before any span or task (a record that does not decode is
        # kept, for the DLQ).
        return to_deliver(decode_event(record, events_pb2.InvoiceRouted), settings.platform_id)

    app.consume(topics.ROUTED, handler=handle, concurrency=settings.delivery_concurrency, select=wanted)
