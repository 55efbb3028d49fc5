"""faust agent: validated -> routed (valid invoices only)."""

from __future__ import annotations

import faust
from invoicing.v1 import events_pb2

from invoicing_common import topics
from invoicing_common.streams import (
    PermanentError,
    Record,
    process,
    raw_topic,
    register_lag_gauge,
    send,
)
from invoicing_common.telemetry import ROUTING_OUTCOMES, record_invoice, tracer
from invoicing_route.domain import decide, routed_event
from invoicing_route.settings import RouteSettings


def decode_validated(record: Record) -> events_pb2.InvoiceValidated:
    if record.value is None:
        raise PermanentError("record has no value")
    event = events_pb2.InvoiceValidated.FromString(record.value)
    if not event.invoice.invoice_id:
        raise PermanentError("InvoiceValidated without invoice.invoice_id")
    return event


def register(app: faust.App, settings: RouteSettings) -> None:
    validated = raw_topic(app, topics.VALIDATED)
    routed = raw_topic(app, topics.ROUTED)
    dlq = raw_topic(app, topics.DLQ)

    async def handle(record: Record) -> None:
        event = decode_validated(record)
        if not event.valid:
            return  # the status service records the rejection
        with tracer().start_as_current_span("route invoice") as span:
            record_invoice(span, event.invoice.invoice_id)
            decision = decide(settings.platform_id, settings.route_default_platform)
            span.set_attributes(
                {
                    "invoicing.routing.outcome": "routed",
                    "invoicing.routing.destination_platform": decision.destination_platform,
                    "invoicing.routing.local_delivery": decision.local_delivery,
                }
            )
            ROUTING_OUTCOMES.add(
                1,
                {
                    "outcome": "local" if decision.local_delivery else "remote",
                    "reason": "",
                },
            )
            out = routed_event(event, decision)
        await send(routed, out.invoice.invoice_id, out.SerializeToString(), out.event_id)

    register_lag_gauge(app)

    @app.agent(validated, name="route")
    async def route(stream: faust.StreamT[bytes]) -> None:
        async for _ in process(stream.events(), handle, dlq=dlq, consumer_group=app.conf.id):
            pass
