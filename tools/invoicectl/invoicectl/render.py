"""JSON shapes of the CLI's output: a public contract (docs/cli.md)."""

from __future__ import annotations

from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from invoicing.v1 import common_pb2, events_pb2, status_pb2

from invoicing_status.lifecycle import PIPELINE_OUTCOMES

_FINAL_PIPELINE_CODES = frozenset(s.value for s in PIPELINE_OUTCOMES)


def iso(ts: Timestamp) -> str:
    return ts.ToDatetime().isoformat(timespec="milliseconds") + "Z"


def severity(value: int) -> str:
    return "warning" if value == common_pb2.SEVERITY_WARNING else "fatal"


def invoice_json(reply: status_pb2.GetInvoiceResponse) -> dict[str, Any]:
    return {
        "invoice_id": reply.invoice_id,
        "status_code": reply.status_code,
        "status": reply.status,
        "reason_code": reply.reason.code,
        "reason": reply.reason.text,
        "filename": reply.filename,
        "trace_id": reply.trace_id,
        "history": [
            {
                "status_code": h.status_code,
                "status": h.status,
                "at": iso(h.at),
                "reason_code": h.reason.code,
                "reason": h.reason.text,
                "actor": h.actor,
                "payment": payment_json(h.payment) if h.HasField("payment") else None,
            }
            for h in reply.history
        ],
        "received_at": iso(reply.received_at) if reply.HasField("received_at") else "",
        "routing": routing_json(reply.routing) if reply.HasField("routing") else None,
        "findings": [
            {"rule": f.rule, "severity": severity(f.severity), "location": f.location, "message": f.message}
            for f in reply.findings
        ],
        "hold": hold_json(reply.hold) if reply.HasField("hold") else None,
        "due_date": reply.summary.due_date,
        "document": document_ref_json(reply.document) if reply.HasField("document") else None,
        "attachments": [document_ref_json(a) for a in reply.attachments],
    }


def origin_name(value: int) -> str:
    """FILE_ORIGIN_EMBEDDED -> "embedded"; a value newer than this client
    shows as its number rather than failing the whole output."""
    try:
        name = common_pb2.FileOrigin.Name(value)  # type: ignore[arg-type]
    except ValueError:
        return str(value)
    return name.removeprefix("FILE_ORIGIN_").lower()


def document_ref_json(ref: common_pb2.DocumentRef) -> dict[str, Any]:
    return {
        "sha256": ref.sha256,
        "size_bytes": ref.size_bytes,
        "media_type": ref.media_type,
        "filename": ref.filename,
        "origin": origin_name(ref.origin),
    }


def document_ref_line(ref: common_pb2.DocumentRef) -> str:
    return f"{ref.filename or '-'}  {ref.media_type or '-'}  {ref.size_bytes} bytes  sha256 {ref.sha256}"


def payment_json(payment: common_pb2.Payment) -> dict[str, Any]:
    return {"amount": payment.amount, "currency": payment.currency, "paid_on": payment.paid_on}


def hold_json(hold: status_pb2.InvoiceHold) -> dict[str, Any]:
    return {
        "stage": hold.stage,
        "code": hold.code,
        "message": hold.message,
        "since": iso(hold.since),
        "dead_letter": hold.dead_letter,
    }


def routing_json(routing: status_pb2.RoutingDecision) -> dict[str, Any]:
    return {
        "outcome": events_pb2.RoutingOutcome.Name(routing.outcome).removeprefix("ROUTING_OUTCOME_").lower(),
        "destination_platform": routing.destination_platform,
        "local_delivery": routing.local_delivery,
        "directory_entry_id": routing.directory_entry_id,
        "reason_code": routing.reason.code,
        "reason": routing.reason.text,
    }


def list_item_json(item: status_pb2.InvoiceListItem) -> dict[str, Any]:
    return {
        "invoice_id": item.invoice_id,
        "status_code": item.status_code,
        "status": item.status,
        "received_at": iso(item.received_at),
        "updated_at": iso(item.updated_at),
        "invoice_number": item.invoice_number,
        "seller_id": item.seller_id,
        "buyer_id": item.buyer_id,
        "filename": item.filename,
        "reason_code": item.reason.code,
        "reason": item.reason.text,
        "due_date": item.due_date,
    }


def status_event_json(event: events_pb2.StatusEvent, position: int | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {} if position is None else {"position": position}
    return data | {
        "event_id": event.event_id,
        "invoice_id": event.invoice_id,
        "status_code": event.status_code,
        "status": event.status,
        "previous_status_code": event.previous_status_code,
        "occurred_at": iso(event.occurred_at),
        "reason_code": event.reason.code,
        "reason": event.reason.text,
        "seller_id": event.seller_id,
        "buyer_id": event.buyer_id,
        "invoice_number": event.invoice_number,
        "trace_id": event.trace_id,
        "sequence": event.sequence,
        "chorus_pro_status": event.chorus_pro_status,
        "uncl4343_code": event.uncl4343_code,
        "payment": payment_json(event.payment) if event.HasField("payment") else None,
    }


def status_event_line(event: events_pb2.StatusEvent) -> str:
    reason = f"  {event.reason.code}: {event.reason.text}" if event.reason.code else ""
    return f"{event.invoice_id}  {event.status_code} {event.status}{reason}"


def is_pipeline_final(code: int) -> bool:
    return code in _FINAL_PIPELINE_CODES
