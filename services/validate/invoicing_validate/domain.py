"""Pure mapping from a validation report to the validated event."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from invoicing.v1 import common_pb2, events_pb2

from invoicing_common.ids import stage_event_id

REJECTION_CODE = "REJ_SEMAN"

_FORMATS = {
    "ubl-invoice": common_pb2.DOCUMENT_FORMAT_UBL_INVOICE,
    "ubl-creditnote": common_pb2.DOCUMENT_FORMAT_UBL_CREDIT_NOTE,
    "cii": common_pb2.DOCUMENT_FORMAT_CII,
    "facturx-pdf": common_pb2.DOCUMENT_FORMAT_FACTURX_PDF,
}
_SUMMARY_TEXT_FIELDS = (
    "invoice_number", "type_code", "issue_date", "currency", "seller_name", "seller_vat_id", "buyer_name",
    "buyer_vat_id", "buyer_reference", "purchase_order_reference", "line_total", "allowance_total",
    "charge_total", "tax_exclusive_total", "tax_total", "tax_total_accounting", "tax_inclusive_total",
    "prepaid_total", "rounding_amount", "payable_amount",
)  # fmt: skip


class FindingLike(Protocol):
    @property
    def rule(self) -> str: ...
    @property
    def severity(self) -> str: ...
    @property
    def location(self) -> str: ...
    @property
    def message(self) -> str: ...


class ReportLike(Protocol):
    valid: bool
    format: str
    profile: str

    @property
    def findings(self) -> Sequence[FindingLike]: ...

    @property
    def summary(self) -> object: ...


def finding_to_proto(finding: FindingLike) -> common_pb2.Finding:
    severity = common_pb2.SEVERITY_WARNING if finding.severity == "warning" else common_pb2.SEVERITY_FATAL
    return common_pb2.Finding(rule=finding.rule, severity=severity, location=finding.location, message=finding.message)


def summary_to_proto(report: ReportLike) -> common_pb2.InvoiceSummary:
    summary = report.summary
    out = common_pb2.InvoiceSummary(
        format=_FORMATS.get(report.format, common_pb2.DOCUMENT_FORMAT_UNSPECIFIED), profile=report.profile
    )
    for name in _SUMMARY_TEXT_FIELDS:
        value = getattr(summary, name, "")
        if value:
            setattr(out, name, str(value))
    out.line_count = int(getattr(summary, "line_count", 0) or 0)
    for value, scheme in getattr(summary, "seller_ids", []) or []:
        out.seller_ids.add(value=value, scheme=scheme)
    for value, scheme in getattr(summary, "buyer_ids", []) or []:
        out.buyer_ids.add(value=value, scheme=scheme)
    endpoint = getattr(summary, "buyer_endpoint", None)
    if endpoint:
        out.buyer_endpoint.value, out.buyer_endpoint.scheme = endpoint
    return out


def validated_event(received: events_pb2.InvoiceReceived, report: ReportLike) -> events_pb2.InvoiceValidated:
    findings = [finding_to_proto(f) for f in report.findings]
    event = events_pb2.InvoiceValidated(
        event_id=stage_event_id(received.invoice.invoice_id, "validated"),
        invoice=received.invoice,
        valid=report.valid,
        findings=findings,
        summary=summary_to_proto(report),
    )
    if report.valid:
        event.document = received.document
    else:
        fatal = [f for f in report.findings if f.severity != "warning"]
        first = fatal[0] if fatal else None
        text = f"{len(fatal)} fatal finding(s)" + (f"; first: {first.rule}: {first.message}" if first else "")
        event.reason.code = REJECTION_CODE
        event.reason.text = text[:1000]
    return event
