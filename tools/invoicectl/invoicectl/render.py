"""JSON shapes of the CLI's output: a public contract (docs/cli.md)."""

from __future__ import annotations

from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from invoicing.v1 import common_pb2, events_pb2, status_pb2

_FINAL_PIPELINE_CODES = frozenset({201, 203, 213})


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
            }
            for h in reply.history
        ],
        "findings": [
            {"rule": f.rule, "severity": severity(f.severity), "location": f.location, "message": f.message}
            for f in reply.findings
        ],
    }


def status_event_json(event: events_pb2.StatusEvent) -> dict[str, Any]:
    return {
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
    }


def status_event_line(event: events_pb2.StatusEvent) -> str:
    reason = f"  {event.reason.code}: {event.reason.text}" if event.reason.code else ""
    return f"{event.invoice_id}  {event.status_code} {event.status}{reason}"


def is_pipeline_final(code: int) -> bool:
    return code in _FINAL_PIPELINE_CODES
