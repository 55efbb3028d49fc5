"""faust agent: validated -> routed (valid invoices only), resolved against
the in-memory directory index (no database round trip per invoice)."""

from __future__ import annotations

import logging

import faust
from invoicing.v1 import events_pb2
from opentelemetry.trace import Status, StatusCode

from invoicing_common import topics
from invoicing_common.streams import Record, decode_event, process, raw_topic, register_lag_gauge, send
from invoicing_common.telemetry import ROUTING_OUTCOMES, record_invoice, tracer
from invoicing_route.domain import BuyerIdentifiers, routed_event
from invoicing_route.settings import RouteSettings
from invoicing_route.usecases import Directory

log = logging.getLogger(__name__)


def register(app: faust.App, settings: RouteSettings, directory: Directory) -> None:
    validated = raw_topic(app, topics.VALIDATED)
    routed = raw_topic(app, topics.ROUTED)
    dlq = raw_topic(app, topics.DLQ)

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

    register_lag_gauge(app)

    @app.agent(validated, name="route")
    async def route(stream: faust.StreamT[bytes]) -> None:
        async for _ in process(stream.events(), handle, dlq=dlq, consumer_group=app.conf.id):
            pass
