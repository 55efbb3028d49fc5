"""faust agent: validated -> routed (valid invoices only)."""

from __future__ import annotations

import faust
from invoicing.v1 import events_pb2

from invoicing_common import topics
from invoicing_common.kafka import trace_headers
from invoicing_common.streams import PermanentError, Record, process, raw_topic, send
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
        decision = decide(settings.platform_id, settings.route_default_platform)
        out = routed_event(event, decision)
        await send(routed, out.invoice.invoice_id, out.SerializeToString(), trace_headers())

    @app.agent(validated, name="route")
    async def route(stream: faust.StreamT[bytes]) -> None:
        async for _ in process(stream.events(), handle, dlq=dlq, consumer_group=app.conf.id):
            pass
