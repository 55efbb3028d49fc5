"""Pure mapping from a validation report to the validated event."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from invoicing.v1 import common_pb2, events_pb2

from invoicing_common.ids import stage_event_id
from invoicing_common.parties import seller
from invoicing_validate import admissibility

# The supervisor's rules are named here too: agents.py imports them from this module.
from invoicing_validate.admissibility import CRASH_RULE as CRASH_RULE
from invoicing_validate.admissibility import TIME_LIMIT_RULE as TIME_LIMIT_RULE
from invoicing_validate.admissibility import inadmissibility
from invoicing_validate.validation.model import FATAL, Finding, Summary, ValidationReport

# The rules refused the document (213 REJECTED).
REJECTION_CODE = "REJ_SEMAN"
# The seller is not a company the submitting account acts for. REJ_COH
# ("incohérence") is the reform's code for a document inconsistent with
# its context; the finding's rule says which inconsistency.
SELLER_REJECTION_CODE = "REJ_COH"
SELLER_RULE = "SELLER-ACCOUNT"


def technical_failure(rule: str, message: str) -> ValidationReport:
    """The report of a document the platform failed to validate (its
    worker crashed on it, or it ran past the time limit, every time it was
    tried): the document ends 501 INADMISSIBLE (admissibility.py)."""
    return ValidationReport(
        valid=False,
        format="",
        profile="",
        findings=[Finding(rule=rule, severity=FATAL, location="", message=message)],
        summary=Summary(),
    )


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
    "prepaid_total", "rounding_amount", "payable_amount", "due_date",
)  # fmt: skip


class FindingLike(admissibility.FindingLike, Protocol):
    @property
    def location(self) -> str: ...


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
    return common_pb2.Finding(
        rule=finding.rule,
        severity=severity,
        location=finding.location,
        message=finding.message,
        release=getattr(finding, "release", ""),
    )


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


def seller_finding(summary: common_pb2.InvoiceSummary, account_sirens: Sequence[str]) -> common_pb2.Finding | None:
    """A fatal finding when the invoice's seller is not (only) a company the
    submitting account acts for: every seller SIREN found (BT-30, BT-29,
    the one inside the BT-31 VAT number) must be one of its SIRENs, there
    must be one, and no French identifier of the seller may be unreadable
    (it could name another company). Names the invoice's own values, never
    the account's."""
    found = seller(summary)
    foreign = sorted(found.sirens - set(account_sirens))
    if found.unreadable:
        message = (
            f"seller identifier {', '.join(found.unreadable)} is not a valid French SIREN, SIRET or VAT number: "
            "the submitting account can only submit for the SIRENs it acts for"
        )
    elif not found.sirens:
        message = (
            "the seller has no French company identifier (a SIREN in BT-30, a SIRET in BT-29 or a French VAT "
            "number in BT-31): the submitting account can only submit for the SIRENs it acts for"
        )
    elif foreign:
        message = f"seller SIREN {', '.join(foreign)} is not a company the submitting account acts for"
    else:
        return None
    return common_pb2.Finding(rule=SELLER_RULE, severity=common_pb2.SEVERITY_FATAL, location="BT-30", message=message)


def unique_name(name: str, taken: set[str]) -> str:
    """``name``, or ``stem-2.ext``, ``stem-3.ext``... when it is taken."""
    if name not in taken:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, dot, ext = name, "", ""
    n = 2
    while f"{stem}-{n}{dot}{ext}" in taken:
        n += 1
    return f"{stem}-{n}{dot}{ext}"


def validated_event(
    received: events_pb2.InvoiceReceived,
    report: ReportLike,
    original: common_pb2.DocumentRef | None = None,
    attachments: Sequence[common_pb2.DocumentRef] = (),
) -> events_pb2.InvoiceValidated:
    """``original``: the archived document (the received record's own
    reference unless validate archived a legacy record's bytes);
    ``attachments``: those sent beside it, then those extracted from it.

    Not valid: ``inadmissible`` (501) with an IRR_* reason when the document
    could not be processed at all, else rejected (213) with the rules'
    reason."""
    findings = [finding_to_proto(f) for f in report.findings]
    summary = summary_to_proto(report)
    unprocessable = None if report.valid else inadmissibility(report.findings)
    # A document that could not be read has no parties to check. One that
    # another platform delivered (origin_platform) was submitted there by
    # its seller's account, which that platform authenticated and checked:
    # its own account here acts for no SIREN.
    readable = bool(report.format) and unprocessable is None
    checks_seller = readable and not received.invoice.origin_platform
    seller = seller_finding(summary, received.submitter_sirens) if checks_seller else None
    event = events_pb2.InvoiceValidated(
        event_id=stage_event_id(received.invoice.invoice_id, "validated"),
        invoice=received.invoice,
        valid=report.valid and seller is None,
        findings=[*findings, seller] if seller is not None else findings,
        summary=summary,
        original=original if original is not None else received.original,
        attachments=attachments,
        rules_release=getattr(report, "rules_release", ""),
    )
    if event.valid:
        return event
    if unprocessable is not None:
        code, finding = unprocessable
        event.inadmissible = True
        event.reason.code = code
        event.reason.text = f"{finding.rule}: {finding.message}"[:1000]
    elif report.valid and seller is not None:
        event.reason.code = SELLER_REJECTION_CODE
        event.reason.text = seller.message[:1000]
    else:
        # The rules' verdict comes first; a seller finding is listed too.
        fatal = [f for f in report.findings if f.severity != "warning"]
        first = fatal[0] if fatal else None
        text = f"{len(fatal)} fatal finding(s)" + (f"; first: {first.rule}: {first.message}" if first else "")
        event.reason.code = REJECTION_CODE
        event.reason.text = text[:1000]
    return event


def shadow_diff(validated: events_pb2.InvoiceValidated, report: ValidationReport) -> events_pb2.RulesShadowDiff | None:
    """The record of a disagreement between the release applied and the one
    in shadow, or None when they agree (or no shadow ran). The verdict
    compared is the rules' own: the seller check does not depend on them."""
    shadow = report.shadow
    if shadow is None or not shadow.disagrees(report.valid):
        return None
    diff = events_pb2.RulesShadowDiff(
        event_id=stage_event_id(validated.invoice.invoice_id, f"rules-shadow:{shadow.release}"),
        invoice_id=validated.invoice.invoice_id,
        active_release=report.rules_release,
        shadow_release=shadow.release,
        active_valid=report.valid,
        shadow_valid=shadow.valid,
        only_active=shadow.only_active,
        only_shadow=shadow.only_shadow,
        invoice_number=report.summary.invoice_number,
        issue_date=report.summary.issue_date,
    )
    diff.occurred_at.GetCurrentTime()
    return diff
