"""What the pipeline's events teach status about shared invoices: the
destination platform's acknowledgement (InvoiceDelivered) is 202 RECEIVED,
once, never backwards, whichever event comes first; the peer an invoice is
shared with is recorded from the routed, delivered and any origin-carrying
event."""

from __future__ import annotations

import datetime as dt

from invoicing.v1 import common_pb2, events_pb2

from invoicing_common import topics
from invoicing_common.ids import stage_event_id
from invoicing_common.kafka import Record
from invoicing_status.agents import interpret
from invoicing_status.domain import plan
from invoicing_status.lifecycle import Status

INVOICE = "5c004160-aa7e-471d-bb39-4f708d608902"
NOW = dt.datetime(2026, 12, 1, 10, 0, tzinfo=dt.UTC)


def _ref(origin: str = "") -> events_pb2.InvoiceRef:
    ref = events_pb2.InvoiceRef(invoice_id=INVOICE, received_event_id="received-1", origin_platform=origin)
    ref.received_at.FromDatetime(NOW - dt.timedelta(minutes=1))
    return ref


def _record(topic: str, event: events_pb2.InvoiceDelivered | events_pb2.InvoiceRouted) -> Record:
    return Record(topic, 0, 0, INVOICE.encode(), event.SerializeToString(), [])


def _delivered() -> Record:
    event = events_pb2.InvoiceDelivered(
        event_id=stage_event_id(INVOICE, "delivered"), invoice=_ref(), destination_platform="peer",
        remote_invoice_id="r-1", attempts=3,
    )  # fmt: skip
    return _record(topics.DELIVERED, event)


def _routed(local: bool, destination: str, origin: str = "") -> Record:
    event = events_pb2.InvoiceRouted(
        event_id="routed-1", invoice=_ref(origin), outcome=events_pb2.ROUTING_OUTCOME_ROUTED,
        destination_platform=destination, local_delivery=local, summary=common_pb2.InvoiceSummary(invoice_number="F"),
    )  # fmt: skip
    return _record(topics.ROUTED, event)


def _after(current: Status | None, record: Record) -> list[tuple[Status, str]]:
    _event_id, _facts, submitted, outcome = interpret(record, NOW)
    return [(c.status, c.actor) for c in plan(current, submitted, outcome)]


def test_the_destination_s_acknowledgement_is_202_by_route() -> None:
    event_id, facts, _submitted, outcome = interpret(_delivered(), NOW)
    assert event_id == stage_event_id(INVOICE, "delivered")
    assert (outcome.status, outcome.actor, outcome.source_event_id) == (Status.RECEIVED, "route", event_id)
    assert facts.destination_platform == "peer" and facts.origin_platform == ""
    # Nothing else of the invoice is overwritten by it.
    assert facts.summary is None and facts.routing is None and facts.business_key is None
    assert _after(Status.ISSUED, _delivered()) == [(Status.RECEIVED, "route")]


def test_before_the_routed_event_it_records_201_first() -> None:
    assert _after(Status.SUBMITTED, _delivered()) == [(Status.ISSUED, "route"), (Status.RECEIVED, "route")]
    assert _after(None, _delivered()) == [
        (Status.SUBMITTED, "ingest"),
        (Status.ISSUED, "route"),
        (Status.RECEIVED, "route"),
    ]
    # The routed event, read after, changes nothing: never backwards.
    assert _after(Status.RECEIVED, _routed(False, "peer")) == []


def test_after_the_destination_moved_on_it_changes_nothing() -> None:
    for later in (Status.RECEIVED, Status.MADE_AVAILABLE, Status.APPROVED, Status.REJECTED, Status.CASHED):
        assert _after(later, _delivered()) == [], later


def test_the_peer_is_recorded_from_routing_elsewhere_and_from_the_origin() -> None:
    _e, facts, _s, outcome = interpret(_routed(False, "peer"), NOW)
    assert (facts.destination_platform, outcome.status) == ("peer", Status.ISSUED)
    _e, facts, _s, outcome = interpret(_routed(True, "local", origin="local"), NOW)
    assert (facts.destination_platform, facts.origin_platform, outcome.status) == ("", "local", Status.MADE_AVAILABLE)
