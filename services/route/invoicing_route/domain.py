"""Pure routing decisions."""

from __future__ import annotations

from dataclasses import dataclass

from invoicing.v1 import events_pb2

from invoicing_common.ids import stage_event_id


@dataclass(frozen=True)
class Decision:
    destination_platform: str
    local_delivery: bool


def decide(platform_id: str, default_platform: str) -> Decision:
    return Decision(destination_platform=default_platform, local_delivery=default_platform == platform_id)


def routed_event(validated: events_pb2.InvoiceValidated, decision: Decision) -> events_pb2.InvoiceRouted:
    return events_pb2.InvoiceRouted(
        event_id=stage_event_id(validated.invoice.invoice_id, "routed"),
        invoice=validated.invoice,
        outcome=events_pb2.ROUTING_OUTCOME_ROUTED,
        destination_platform=decision.destination_platform,
        local_delivery=decision.local_delivery,
        summary=validated.summary,
    )
