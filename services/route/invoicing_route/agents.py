"""Stream handler: validated -> routed (valid invoices only), resolved against
the in-memory directory index (no database round trip per invoice)."""

from __future__ import annotations

import logging

from invoicing.v1 import events_pb2
from opentelemetry.trace import Status, StatusCode

from invoicing_common import topics
from invoicing_common.kafka import Record, StreamApp, decode_event, send
from invoicing_common.telemetry import ROUTING_OUTCOMES, record_invoice, tracer
from invoicing_route.domain import BuyerIdentifiers, routed_event
from invoicing_route.settings import RouteSettings
from invoicing_route.usecases import Directory

log = logging.getLogger(__name__)


def register(app: StreamApp, settings: RouteSettings, directory: Directory) -> None:
    routed = app.topic(topics.ROUTED)

    async def handle(record: Record) -> None:
        event = decode_event(record, events_pb2.InvoiceValidated)
        if not event.valid:
            return  # the status service records the rejection
        with tracer().start_as_current_span("route invoice") as span:
            record_invoice(span, event.invoice.invoice_id)
            resolution = directory.resolve_now(BuyerIdentifiers.from_summary(event.summary))
            out = routed_event(event, resolution, settings.platform_id)
            outcome = "routed" if resolution.routed else "rejected"
            ROUTING_OUTCOMES.add(1, {"outcome": outcome, "reason": resolution.reason_code or outcome})
            span.set_attributes(
                {
                    "invoicing.routing.outcome": outcome,
                    "invoicing.routing.destination_platform": out.destination_platform,
                    "invoicing.routing.local_delivery": out.local_delivery,
                    "invoicing.routing.entry_id": out.directory_entry_id,
                }
            )
            if not resolution.routed:
                span.set_attribute("invoicing.reason_code", out.reason.code)
                span.set_attribute("invoicing.reason", out.reason.text)
                span.set_status(Status(StatusCode.ERROR, f"{out.reason.code}: {out.reason.text}"[:500]))
        log.info(
            "routed to %s" if resolution.routed else "refused: %s",
            out.destination_platform if resolution.routed else out.reason.text,
            extra={"invoice_id": out.invoice.invoice_id},
        )
        await send(routed, out.invoice.invoice_id, out.SerializeToString(), out.event_id)

    app.consume(topics.VALIDATED, handler=handle)
