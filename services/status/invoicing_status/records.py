"""Rows of the status store, and the statements both write paths share
(one event at a time in ``repository``, set-based in ``batch``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from invoicing.v1 import common_pb2, events_pb2

from invoicing_common.ids import stage_event_id
from invoicing_common.parties import buyer_sirens, seller_sirens
from invoicing_status.domain import Change, Payment, iso_date
from invoicing_status.holds import Hold
from invoicing_status.lifecycle import CHORUS_PRO, FRENCH_NAMES, UNCL4343, Status

OUTBOX_CHANNEL = "status_outbox"


@dataclass
class InvoiceFacts:
    """What an event teaches about an invoice besides its status."""

    invoice_id: str
    filename: str = ""
    submitter: str = ""
    received_at: datetime | None = None
    trace_id: str = ""
    summary: common_pb2.InvoiceSummary | None = None
    findings: list[dict[str, str]] | None = None
    routing: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # Set for valid invoices: claimed in the same transaction (REJ_UNI rule).
    business_key: str | None = None
    # True once validation has passed, the seller check included: only then
    # do the summary's seller and buyer decide who may see the invoice. An
    # invoice that failed is shown to its submitter (and operators) only, so
    # a forged invoice never reaches the views of the companies it names.
    parties_checked: bool = False
    # The archived document and attachments this event names (files_json).
    received_files: str | None = None
    validated_files: str | None = None
    # The platform that delivered the invoice here, or the one this
    # platform delivered it to (migration 008); "" when the event does not say.
    origin_platform: str = ""
    destination_platform: str = ""


@dataclass(frozen=True)
class HistoryRow:
    seq: int
    status: Status
    previous: Status | None
    reason_code: str
    reason_text: str
    actor: str
    occurred_at: datetime
    source_event_id: str
    trace_id: str
    payment: Payment | None = None


@dataclass(frozen=True)
class InvoiceView:
    invoice_id: str
    status: Status
    reason_code: str
    reason_text: str
    filename: str
    trace_id: str
    summary: common_pb2.InvoiceSummary
    findings: list[dict[str, str]]
    routing: dict[str, Any] | None
    history: list[HistoryRow]
    received_at: datetime | None = None
    hold: Hold | None = None
    # {"document": ref, "attachments": [ref, ...]} (files_json), or None.
    files: dict[str, Any] | None = None


@dataclass(frozen=True)
class ReceivedMessage:
    """Another platform's CDAR message, kept with the status it set."""

    platform: str
    message_id: str
    status_code: int
    body: bytes


# (current status, id of the invoice already holding the business key) -> changes
Planner = Callable[[Status | None, str | None], list[Change]]
# Serialises history appends across writers and instances, so positions
# (history seq) become visible in increasing order: a watcher that resumes
# after position N never misses a later-committed N-1.
HISTORY_LOCK = 0x1A7E5EC0


# An event's facts over the invoice's row ($1 the invoice, $2 to $18 as
# facts_args gives them): most take the event's value when it has one, the
# receipt time and the trace keep the first the row got.
_FACTS_SET = (
    " filename = CASE WHEN $2 <> '' THEN $2 ELSE filename END,"
    " submitter = CASE WHEN $3 <> '' THEN $3 ELSE submitter END,"
    " received_at = COALESCE(received_at, $4),"
    " trace_id = CASE WHEN trace_id = '' THEN $5 ELSE trace_id END,"
    " summary = COALESCE($6, summary),"
    " findings = COALESCE($7::jsonb, findings),"
    " routing = COALESCE($8::jsonb, routing),"
    " invoice_number = CASE WHEN $9 <> '' THEN $9 ELSE invoice_number END,"
    " seller_ids = CASE WHEN cardinality($10::text[]) > 0 THEN $10 ELSE seller_ids END,"
    " buyer_ids = CASE WHEN cardinality($11::text[]) > 0 THEN $11 ELSE buyer_ids END,"
    " seller_sirens = COALESCE($12::text[], seller_sirens),"
    " buyer_sirens = COALESCE($13::text[], buyer_sirens),"
    " due_date = COALESCE($14::date, due_date),"
    " received_files = COALESCE($15::jsonb, received_files),"
    " validated_files = COALESCE($16::jsonb, validated_files),"
    " origin_platform = COALESCE(NULLIF($17, ''), origin_platform),"
    " destination_platform = COALESCE(NULLIF($18, ''), destination_platform)"
)
RECORD_FACTS = "UPDATE invoices SET" + _FACTS_SET + " WHERE invoice_id = $1"
# A batch's whole effect on one invoice's row in one new row version: its
# events' facts folded (fold_facts), and its last status when the batch
# changed it ($19 NULL when not; $20, $21 its reason, $22 the time).
RECORD_FACTS_AND_STATUS = (
    "UPDATE invoices SET" + _FACTS_SET + ", status_code = COALESCE($19::smallint, status_code),"
    " reason_code = CASE WHEN $19::smallint IS NULL THEN reason_code ELSE $20 END,"
    " reason_text = CASE WHEN $19::smallint IS NULL THEN reason_text ELSE $21 END,"
    " updated_at = CASE WHEN $19::smallint IS NULL THEN updated_at ELSE $22 END"
    " WHERE invoice_id = $1"
)
SET_STATUS = (
    "UPDATE invoices SET status_code = $2, reason_code = $3, reason_text = $4, updated_at = $5 WHERE invoice_id = $1"
)
INSERT_OUTBOX = "INSERT INTO outbox (seq, invoice_id, payload, headers) VALUES ($1, $2, $3, $4::jsonb)"
# INSERT_OUTBOX for many rows, each column an array.
INSERT_OUTBOX_ROWS = (
    "INSERT INTO outbox (seq, invoice_id, payload, headers)"
    " SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::bytea[], $4::jsonb[])"
)
INSERT_RECEIVED_MESSAGE = (
    "INSERT INTO received_lifecycle_messages (platform, message_id, invoice_id, status_code, body)"
    " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING"
)


def facts_args(facts: InvoiceFacts) -> tuple[Any, ...]:
    summary = facts.summary
    return (
        facts.invoice_id,
        facts.filename,
        facts.submitter,
        facts.received_at,
        facts.trace_id,
        summary.SerializeToString() if summary is not None else None,
        json.dumps(facts.findings) if facts.findings is not None else None,
        json.dumps(facts.routing) if facts.routing is not None else None,
        summary.invoice_number if summary is not None else "",
        _id_values(summary.seller_ids, summary.seller_vat_id) if summary is not None else [],
        _id_values(summary.buyer_ids, summary.buyer_vat_id) if summary is not None else [],
        sorted(seller_sirens(summary)) if summary is not None and facts.parties_checked else None,
        sorted(buyer_sirens(summary)) if summary is not None and facts.parties_checked else None,
        # Validation checks BT-9's form; anything else is no date to filter on.
        iso_date(summary.due_date) if summary is not None else None,
        facts.received_files,
        facts.validated_files,
        facts.origin_platform,
        facts.destination_platform,
    )


def _absent(value: Any) -> bool:
    return value is None or value == ""


def _no_ids(value: Any) -> bool:
    return not value


# How RECORD_FACTS treats each of facts_args's values after the invoice id:
# (what counts as "the event does not say", whether the row keeps its first
# value rather than taking the latest).
_FACT_RULES: tuple[tuple[Callable[[Any], bool], bool], ...] = (
    (_absent, False),  # filename
    (_absent, False),  # submitter
    (_absent, True),  # received_at
    (_absent, True),  # trace_id
    (_absent, False),  # summary
    (_absent, False),  # findings
    (_absent, False),  # routing
    (_absent, False),  # invoice_number
    (_no_ids, False),  # seller_ids
    (_no_ids, False),  # buyer_ids
    (_absent, False),  # seller_sirens ([] is a value)
    (_absent, False),  # buyer_sirens
    (_absent, False),  # due_date
    (_absent, False),  # received_files
    (_absent, False),  # validated_files
    (_absent, False),  # origin_platform
    (_absent, False),  # destination_platform
)


def fold_facts(events: Sequence[tuple[Any, ...]]) -> tuple[Any, ...]:
    """One invoice's facts_args, for several events in order, folded into
    one tuple that RECORD_FACTS applies once with the effect of applying
    each in turn: the latest value an event gave, or for the receipt time
    and the trace, the first."""
    first, *rest = events
    folded = list(first)
    for args in rest:
        for position, (absent, keeps_first) in enumerate(_FACT_RULES, start=1):
            value = args[position]
            if absent(value) or (keeps_first and not absent(folded[position])):
                continue
            folded[position] = value
    return tuple(folded)


_REF_FIELDS = ("sha256", "size_bytes", "media_type", "filename", "origin")


def files_json(original: common_pb2.DocumentRef, attachments: Sequence[common_pb2.DocumentRef]) -> str | None:
    """An event's file references as stored; None when it names none (a
    record from before the archive)."""
    if not original.sha256:
        return None
    return json.dumps(
        {
            "document": {name: getattr(original, name) for name in _REF_FIELDS},
            "attachments": [{name: getattr(a, name) for name in _REF_FIELDS} for a in attachments],
        }
    )


def file_refs(files: dict[str, Any] | None) -> tuple[common_pb2.DocumentRef | None, list[common_pb2.DocumentRef]]:
    if not files:
        return None, []
    return common_pb2.DocumentRef(**files["document"]), [common_pb2.DocumentRef(**a) for a in files["attachments"]]


def _ts(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def _first_id(ids: Sequence[common_pb2.PartyIdentifier]) -> str:
    return f"{ids[0].scheme}:{ids[0].value}" if ids else ""


def _id_values(ids: Sequence[common_pb2.PartyIdentifier], vat_id: str) -> list[str]:
    """Identifier values a filter can match (SIREN, SIRET, VAT id, ...). A
    SIRET also answers to its SIREN."""
    values = {i.value for i in ids if i.value}
    values |= {i.value[:9] for i in ids if i.scheme == "0009" and len(i.value) == 14}
    if vat_id:
        values.add(vat_id)
    return sorted(values)


def status_event(
    seq: int, invoice_id: str, change: Change, previous: Status | None, summary: common_pb2.InvoiceSummary | None,
    trace_id: str,
) -> events_pb2.StatusEvent:  # fmt: skip
    event = events_pb2.StatusEvent(
        event_id=stage_event_id(invoice_id, f"status:{change.status.value}:{change.source_event_id}"),
        invoice_id=invoice_id,
        status_code=change.status.value,
        status=change.status.name,
        previous_status_code=previous.value if previous is not None else 0,
        occurred_at=_ts(change.occurred_at),
        trace_id=trace_id,
        sequence=seq,
        actor=change.actor,
        chorus_pro_status=CHORUS_PRO.get(change.status) or "",
        uncl4343_code=UNCL4343.get(change.status) or "",
        status_label_fr=FRENCH_NAMES[change.status],
    )
    if change.reason is not None:
        event.reason.code, event.reason.text = change.reason.code, change.reason.text
    if change.payment is not None:
        payment_proto(change.payment, event.payment)
    if summary is not None:
        event.seller_id = _first_id(summary.seller_ids)
        event.buyer_id = _first_id(summary.buyer_ids)
        event.invoice_number = summary.invoice_number
    return event


def payment_proto(payment: Payment, out: common_pb2.Payment) -> None:
    out.amount, out.currency, out.paid_on = payment.amount, payment.currency, payment.paid_on.isoformat()
