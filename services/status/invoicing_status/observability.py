"""Span attributes and metrics for status transitions, shared by the
stream handler (pipeline events) and the APIs (UpdateStatus, another
platform's messages), and the metrics of the exchange with other platforms."""

from __future__ import annotations

from datetime import datetime

from opentelemetry.trace import Span

from invoicing_common.telemetry import E2E_LATENCY, STATUS_TRANSITIONS, meter
from invoicing_status.domain import Change
from invoicing_status.lifecycle import PIPELINE_OUTCOMES

EXCHANGE_SENT = meter().create_counter(
    "invoicing.exchange.sent",
    unit="{message}",
    description="CDAR messages another platform accepted, by platform and status code",
)
EXCHANGE_REFUSED = meter().create_counter(
    "invoicing.exchange.refused",
    unit="{message}",
    description="CDAR messages another platform refused for good (not sent again), by platform and gRPC code",
)
EXCHANGE_CDAR_INVALID = meter().create_counter(
    "invoicing.exchange.cdar_invalid",
    unit="{message}",
    description="CDAR messages not sent: the official rules refuse them, or the invoice cannot be expressed"
    " (a bug to report), by platform and status code",
)
EXCHANGE_RECEIVED = meter().create_counter(
    "invoicing.exchange.received",
    unit="{message}",
    description="CDAR messages received from other platforms, by platform, status code and outcome"
    " (applied, duplicate, or the gRPC code of the refusal)",
)


def observe_changes(span: Span, changes: list[Change], received_at: datetime | None) -> None:
    """Span attributes and metrics for the transitions just made."""
    span.set_attribute("invoicing.status_codes", [c.status.value for c in changes])
    for change in changes:
        STATUS_TRANSITIONS.add(1, {"status_code": change.status.value, "status": change.status.name})
        if change.reason is not None:
            span.set_attribute("invoicing.reason_code", change.reason.code)
            span.set_attribute("invoicing.reason", change.reason.text)
        if change.status in PIPELINE_OUTCOMES and received_at is not None:
            E2E_LATENCY.record((change.occurred_at - received_at).total_seconds(), {"status_code": change.status.value})
    if changes:
        span.set_attribute("invoicing.status_code", changes[-1].status.value)
