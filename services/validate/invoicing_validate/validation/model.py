"""Result types of the validation engine.

They mirror ``Finding`` and ``InvoiceSummary`` in
proto/invoicing/v1/common.proto but stay plain dataclasses so that this
library needs neither protobuf nor the generated code, and results pickle
cheaply out of a ProcessPoolExecutor worker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:
    # embedded.py builds on this module; the report only names its type.
    from .embedded import EmbeddedFile

FATAL: Final = "fatal"
WARNING: Final = "warning"

Severity = Literal["fatal", "warning"]

FORMAT_UBL_INVOICE: Final = "ubl-invoice"
FORMAT_UBL_CREDIT_NOTE: Final = "ubl-creditnote"
FORMAT_CII: Final = "cii"
FORMAT_FACTURX_PDF: Final = "facturx-pdf"
FORMAT_UNKNOWN: Final = "unknown"


@dataclass(frozen=True)
class Finding:
    """One problem found in a document."""

    rule: str
    severity: str
    location: str
    message: str
    # The rule release that fired it, e.g. "BR-FR 1.3.0" or "EN16931 1.3.16";
    # empty for checks of our own (XSD, identifiers, format).
    release: str = ""

    @property
    def is_fatal(self) -> bool:
        return self.severity == FATAL


@dataclass
class Summary:
    """Business facts of the invoice (BT numbers as in EN 16931)."""

    profile: str = ""  # BT-24 as written in the document
    invoice_number: str = ""  # BT-1
    type_code: str = ""  # BT-3
    issue_date: str = ""  # BT-2, ISO YYYY-MM-DD
    currency: str = ""  # BT-5
    seller_name: str = ""  # BT-27
    seller_ids: list[tuple[str, str]] = field(default_factory=list)  # BT-29/BT-30
    seller_vat_id: str = ""  # BT-31
    buyer_name: str = ""  # BT-44
    buyer_ids: list[tuple[str, str]] = field(default_factory=list)  # BT-46/BT-47
    buyer_vat_id: str = ""  # BT-48
    buyer_endpoint: tuple[str, str] | None = None  # BT-49 (value, scheme)
    buyer_reference: str = ""  # BT-10
    purchase_order_reference: str = ""  # BT-13
    line_count: int = 0
    line_total: str = ""  # BT-106
    allowance_total: str = ""  # BT-107
    charge_total: str = ""  # BT-108
    tax_exclusive_total: str = ""  # BT-109
    tax_total: str = ""  # BT-110
    tax_total_accounting: str = ""  # BT-111
    tax_inclusive_total: str = ""  # BT-112
    prepaid_total: str = ""  # BT-113
    rounding_amount: str = ""  # BT-114
    payable_amount: str = ""  # BT-115
    due_date: str = ""  # BT-9, ISO YYYY-MM-DD


@dataclass(frozen=True)
class ShadowOutcome:
    """What a release run in shadow would have decided."""

    release: str
    valid: bool
    # Fatal French rules that fired in one release and not the other.
    only_active: list[str]
    only_shadow: list[str]

    def disagrees(self, active_valid: bool) -> bool:
        return self.valid != active_valid or bool(self.only_active or self.only_shadow)


@dataclass
class ValidationReport:
    """Verdict on one document: valid means no fatal finding."""

    valid: bool
    format: str
    profile: str
    findings: list[Finding]
    summary: Summary
    # The files the invoice carries (embedded.py), whenever it could be read,
    # valid or not; the invoice's own XML too when it came in a PDF.
    attachments: list[EmbeddedFile] = field(default_factory=list)
    # The French rules release applied ("" when the French rules did not
    # apply) and how it was chosen: issue-date, in-force or requested.
    rules_release: str = ""
    rules_selection: str = ""
    # The shadow release's verdict, when one runs (never changes `valid`).
    shadow: ShadowOutcome | None = None

    @property
    def fatal_findings(self) -> list[Finding]:
        return [f for f in self.findings if f.is_fatal]

    def rules(self, severity: str | None = None) -> set[str]:
        """Rule ids that fired, optionally only those of one severity."""
        return {f.rule for f in self.findings if severity is None or f.severity == severity}


class DocumentRejected(Exception):
    """Raised inside the engine when a document cannot be checked further.

    Never escapes the public API: the engine turns it into its finding.
    """

    def __init__(self, finding: Finding) -> None:
        super().__init__(finding.message)
        self.finding = finding


class ArtefactsMissing(RuntimeError):
    """The XSD/XSLT files are not where they should be (an install problem)."""
