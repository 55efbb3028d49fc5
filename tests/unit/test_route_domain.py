from __future__ import annotations

from invoicing.v1 import common_pb2, events_pb2

from invoicing_route.domain import decide, routed_event


def test_local_destination_is_made_available_here() -> None:
    assert decide("local", "local").local_delivery
    remote = decide("local", "pdp-042")
    assert not remote.local_delivery and remote.destination_platform == "pdp-042"


def test_routed_event_keeps_the_invoice_reference_and_summary() -> None:
    validated = events_pb2.InvoiceValidated(
        invoice=events_pb2.InvoiceRef(invoice_id="i-1", received_event_id="r-1"),
        valid=True,
        summary=common_pb2.InvoiceSummary(invoice_number="FA-1"),
    )
    event = routed_event(validated, decide("local", "local"))
    assert event.invoice.invoice_id == "i-1" and event.summary.invoice_number == "FA-1"
    assert event.outcome == events_pb2.ROUTING_OUTCOME_ROUTED and event.local_delivery
    assert event.event_id == routed_event(validated, decide("local", "local")).event_id
