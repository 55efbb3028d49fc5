"""Stream handler: projects received/validated/routed/delivered events into the store."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf.message import Message
from invoicing.v1 import common_pb2, events_pb2
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, Span

from invoicing_common import topics
from invoicing_common.kafka import PermanentError, Record, StreamApp, is_transient
from invoicing_common.parties import seller_sirens
from invoicing_common.telemetry import HOLDS, record_invoice, tracer
from invoicing_status.domain import Change, Outcome, Submitted, business_key, plan
from invoicing_status.holds import RANK, hold_of
from invoicing_status.lifecycle import Reason, Status
from invoicing_status.observability import observe_changes
from invoicing_status.records import InvoiceFacts, Planner, files_json
from invoicing_status.repository import StatusRepository

log = logging.getLogger(__name__)


def _facts(ref: events_pb2.InvoiceRef) -> tuple[InvoiceFacts, Submitted]:
    received_at = ref.received_at.ToDatetime(tzinfo=UTC)
    facts = InvoiceFacts(
        invoice_id=ref.invoice_id,
        filename=ref.filename,
        submitter=ref.submitter,
        received_at=received_at,
        trace_id=ref.trace_id,
        origin_platform=ref.origin_platform,
    )
    return facts, Submitted(received_event_id=ref.received_event_id, received_at=received_at)


def _business_key(summary: common_pb2.InvoiceSummary) -> str | None:
    return business_key(
        seller_sirens(summary),
        [(i.value, i.scheme) for i in summary.seller_ids],
        summary.seller_vat_id,
        summary.seller_name,
        summary.invoice_number,
        summary.issue_date,
        summary.type_code,
    )


def interpret(record: Record, now: datetime) -> tuple[str, InvoiceFacts, Submitted, Outcome]:
    """Decode a pipeline record into (event id, facts, entry, requested outcome)."""
    if record.value is None:
        raise PermanentError("record has no value")
    decoders: dict[str, Callable[[bytes], Message]] = {
        topics.RECEIVED: events_pb2.InvoiceReceived.FromString,
        topics.VALIDATED: events_pb2.InvoiceValidated.FromString,
        topics.ROUTED: events_pb2.InvoiceRouted.FromString,
        topics.DELIVERED: events_pb2.InvoiceDelivered.FromString,
    }
    decoded = decoders[record.topic](record.value)
    ref: events_pb2.InvoiceRef = decoded.invoice  # type: ignore[attr-defined]
    event_id: str = decoded.event_id  # type: ignore[attr-defined]
    if not ref.invoice_id or not ref.received_event_id or not event_id:
        raise PermanentError(f"{type(decoded).__name__} lacks invoice_id, received_event_id or event_id")
    facts, submitted = _facts(ref)
    if isinstance(decoded, events_pb2.InvoiceReceived):
        facts.received_files = files_json(decoded.original, decoded.attachments)
        return event_id, facts, submitted, Outcome(None, "ingest", now, event_id)
    if isinstance(decoded, events_pb2.InvoiceValidated):
        facts.summary = decoded.summary
        facts.validated_files = files_json(decoded.original, decoded.attachments)
        facts.findings = [
            {
                "rule": f.rule,
                "severity": "warning" if f.severity == 2 else "fatal",
                "location": f.location,
                "message": f.message,
            }
            for f in decoded.findings
        ]
        if decoded.valid:
            facts.parties_checked = True
            facts.business_key = _business_key(decoded.summary)
            return event_id, facts, submitted, Outcome(None, "validate", now, event_id)
        # Events from before `inadmissible` existed read False: 213, as then.
        if decoded.inadmissible:
            reason = Reason(decoded.reason.code or "IRR_SYNTAX", decoded.reason.text)
            return event_id, facts, submitted, Outcome(Status.INADMISSIBLE, "validate", now, event_id, reason)
        reason = Reason(decoded.reason.code or "REJ_SEMAN", decoded.reason.text)
        return event_id, facts, submitted, Outcome(Status.REJECTED, "validate", now, event_id, reason)
    if isinstance(decoded, events_pb2.InvoiceDelivered):
        # The destination platform acknowledged it (route's delivery stage):
        # 202. It was issued to that platform first, whichever of the two
        # events this service reads first.
        facts.destination_platform = decoded.destination_platform
        outcome = Outcome(Status.RECEIVED, "route", now, event_id, implies=Status.ISSUED)
        return event_id, facts, submitted, outcome
    assert isinstance(decoded, events_pb2.InvoiceRouted)
    facts.summary = decoded.summary
    facts.parties_checked = True  # only valid invoices are routed
    facts.routing = {
        "outcome": events_pb2.RoutingOutcome.Name(decoded.outcome),
        "destination_platform": decoded.destination_platform,
        "local_delivery": decoded.local_delivery,
        "directory_entry_id": decoded.directory_entry_id,
        "reason_code": decoded.reason.code,
        "reason": decoded.reason.text,
    }
    if decoded.outcome == events_pb2.ROUTING_OUTCOME_ROUTED:
        facts.business_key = _business_key(decoded.summary)
        if not decoded.local_delivery:
            facts.destination_platform = decoded.destination_platform
        status = Status.MADE_AVAILABLE if decoded.local_delivery else Status.ISSUED
        return event_id, facts, submitted, Outcome(status, "route", now, event_id)
    reason = Reason(decoded.reason.code or "REJ_ADR", decoded.reason.text)
    return event_id, facts, submitted, Outcome(Status.REJECTED, "route", now, event_id, reason)


@dataclass
class _Prepared:
    record: Record
    apply: Span
    event_id: str
    facts: InvoiceFacts
    planner: Planner


def register(
    app: StreamApp,
    repository: StatusRepository,
    on_change: Callable[[], None],
    batch_size: int = 200,
    batch_window: float = 0.1,
    batch_interval: float | None = None,
) -> None:
    """Batches of pipeline events, one transaction each. The stream
    runtime's policy applies: a transient fault retries the batch; a record
    that cannot be applied (undecodable, or refused by the database) makes
    the batch run again one record at a time, and that record alone goes to
    the DLQ."""

    def prepare(record: Record, now: datetime) -> _Prepared:
        event_id, facts, submitted, outcome = interpret(record, now)
        parent = trace.set_span_in_context(record.span) if record.span is not None else None
        apply = tracer().start_span("apply status", context=parent)
        record_invoice(apply, facts.invoice_id)
        # The outbox keeps this span's context: the public status event
        # continues the invoice's trace.
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(apply))
        facts.headers = carrier

        def planner(current: Status | None, duplicate_of: str | None) -> list[Change]:
            return plan(current, submitted, outcome, duplicate_of)

        return _Prepared(record, apply, event_id, facts, planner)

    async def hold(letters: list[Record]) -> None:
        holds = []
        for record in letters:
            try:
                found = hold_of(record)
            except Exception:
                log.exception("unreadable dead letter at %s, not holding anything", record.where)
                continue
            if found is not None:
                holds.append(found)
        held = await repository.hold_many(holds)
        for h in held:
            HOLDS.add(1, {"stage": h.stage})
        if held:
            log.warning("invoice(s) held: %s", ", ".join(f"{h.invoice_id} at {h.stage}" for h in held))

    async def handle_batch(records: list[Record]) -> None:
        letters = [r for r in records if r.topic == topics.DLQ]
        if letters:
            try:
                await hold(letters)
            except Exception as exc:
                if is_transient(exc):
                    raise
                # A dead letter is never dead-lettered again: that could loop.
                log.exception("holds of %d dead letter(s) not recorded", len(letters))
            records = [r for r in records if r.topic != topics.DLQ]
            if not records:
                return
        now = datetime.now(UTC)
        items: list[_Prepared] = []
        try:
            for record in records:
                items.append(prepare(record, now))
            links = [Link(item.apply.get_span_context()) for item in items]
            with tracer().start_as_current_span("apply status batch", links=links) as batch_span:
                batch_span.set_attribute("invoicing.batch.size", len(items))
                results = await repository.apply_many(
                    [(i.event_id, i.facts, i.planner) for i in items],
                    [(i.facts.invoice_id, RANK[i.record.topic]) for i in items],
                )
        except BaseException:
            for item in items:
                item.apply.end()
            raise
        for item, changes in zip(items, results, strict=True):
            observe_changes(item.apply, changes, item.facts.received_at)
            item.apply.end()
            if changes:
                log.info(
                    "status %s",
                    ",".join(str(c.status.value) for c in changes),
                    extra={"invoice_id": item.facts.invoice_id},
                )
        if any(results):
            on_change()

    # Batches: one transaction (one commit) per batch; events of one
    # partition keep their order inside it. Offsets are committed after it.
    # The DLQ too: a dead letter of an invoice's event holds the invoice.
    app.consume_batches(
        topics.RECEIVED,
        topics.VALIDATED,
        topics.ROUTED,
        topics.DELIVERED,
        topics.DLQ,
        handler=handle_batch,
        batch_size=batch_size,
        batch_window=batch_window,
        batch_interval=batch_interval,
    )
