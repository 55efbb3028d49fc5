"""Runs in the worker processes: the CPU-bound document checks.

Kept importable without Kafka or asyncio so a ProcessPoolExecutor worker only
loads what validation needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

UBL_INVOICE = "{urn:oasis:names:specification:ubl:schema:xsd:Invoice-2}Invoice"
UBL_CREDIT_NOTE = "{urn:oasis:names:specification:ubl:schema:xsd:CreditNote-2}CreditNote"
CII = "{urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100}CrossIndustryInvoice"
_FORMATS = {UBL_INVOICE: "ubl-invoice", UBL_CREDIT_NOTE: "ubl-creditnote", CII: "cii"}


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: str
    location: str
    message: str


@dataclass
class Summary:
    profile: str = ""
    invoice_number: str = ""
    type_code: str = ""
    issue_date: str = ""
    currency: str = ""
    seller_name: str = ""
    seller_ids: list[tuple[str, str]] = field(default_factory=list)
    seller_vat_id: str = ""
    buyer_name: str = ""
    buyer_ids: list[tuple[str, str]] = field(default_factory=list)
    buyer_vat_id: str = ""
    buyer_endpoint: tuple[str, str] | None = None
    buyer_reference: str = ""
    purchase_order_reference: str = ""
    line_count: int = 0


@dataclass
class Report:
    valid: bool
    format: str
    profile: str
    findings: list[Finding]
    summary: Summary


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False, huge_tree=False
    )


def run_checks(document: bytes, filename: str = "") -> Report:
    def rejected(rule: str, message: str, fmt: str = "unknown") -> Report:
        return Report(False, fmt, "", [Finding(rule, "fatal", "", message)], Summary())

    if not document.strip():
        return rejected("FORMAT", "the document is empty")
    try:
        root = etree.fromstring(document, _parser())
    except etree.XMLSyntaxError as exc:
        return rejected("PARSE", f"the document is not well-formed XML: {exc}")
    if root.getroottree().docinfo.doctype:
        return rejected("PARSE", "a DOCTYPE declaration is not allowed")
    fmt = _FORMATS.get(root.tag)
    if fmt is None:
        return rejected("FORMAT", f"unrecognised document: root element {root.tag!r}")
    return Report(True, fmt, "", [], Summary())
