"""Business summary (InvoiceSummary) of a UBL or CII document.

Extraction is tolerant: a missing element leaves its field empty, since the
summary is also produced for documents that fail validation (the status
service shows what was rejected).
"""

from __future__ import annotations

import threading
from typing import Any, Final

from lxml import etree

from .formats import NS_CII, NS_UBL_CREDIT_NOTE, NS_UBL_INVOICE
from .identifiers import PartyIdentifier
from .model import FORMAT_CII, Summary

NS: Final = {
    "ubl": NS_UBL_INVOICE,
    "cn": NS_UBL_CREDIT_NOTE,
    "cac": "urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2",
    "cbc": "urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2",
    "rsm": NS_CII,
    "ram": "urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:100",
    "udt": "urn:un:unece:uncefact:data:standard:UnqualifiedDataType:100",
}
_PREFIX_OF: Final = {uri: prefix for prefix, uri in NS.items()}


def xpath_of(el: etree._Element) -> str:
    """Prefixed XPath like the schematron's, e.g. /ubl:Invoice[1]/cbc:ID[1]."""
    steps: list[str] = []
    current: etree._Element | None = el
    while current is not None:
        qname = etree.QName(current)
        prefix = _PREFIX_OF.get(qname.namespace or "", "")
        name = f"{prefix}:{qname.localname}" if prefix else qname.localname
        parent = current.getparent()
        index = 1
        if parent is not None:
            for sibling in parent.iterchildren(current.tag):
                if sibling is current:
                    break
                index += 1
        steps.append(f"{name}[{index}]")
        current = parent
    return "/" + "/".join(reversed(steps))


_local = threading.local()


def _xpath(root: etree._Element, path: str) -> Any:
    """Evaluate ``path`` compiled once per thread (``root.xpath`` compiles
    on every call; compiled XPath objects are not shared between threads)."""
    compiled: dict[str, etree.XPath] | None = getattr(_local, "xpaths", None)
    if compiled is None:
        compiled = _local.xpaths = {}
    evaluator = compiled.get(path)
    if evaluator is None:
        evaluator = compiled[path] = etree.XPath(path, namespaces=NS)
    return evaluator(root)


def _first(root: etree._Element, path: str) -> etree._Element | None:
    found = _xpath(root, path)
    if isinstance(found, list) and found and isinstance(found[0], etree._Element):
        return found[0]
    return None


def _text(root: etree._Element | None, path: str) -> str:
    if root is None:
        return ""
    el = _first(root, path)
    return " ".join((el.text or "").split()) if el is not None else ""


def _count(root: etree._Element, path: str) -> int:
    found = _xpath(root, f"count({path})")
    return int(found) if isinstance(found, float) else 0


def _ids(party: etree._Element | None, specs: list[tuple[str, str, str]]) -> list[PartyIdentifier]:
    out: list[PartyIdentifier] = []
    if party is None:
        return out
    for path, bt, label in specs:
        for el in _xpath(party, path):
            if not isinstance(el, etree._Element):
                continue
            value = (el.text or "").strip()
            if value:
                out.append(
                    PartyIdentifier(
                        bt=bt,
                        label=label,
                        value=value,
                        scheme=(el.get("schemeID") or "").strip(),
                        location=xpath_of(el),
                    )
                )
    return out


def iso_date_from_cii(value: str, fmt: str) -> str:
    # CII dates are format 102 (CCYYMMDD) in EN 16931; others pass through.
    if (fmt in ("", "102")) and len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value


def _amount_in(root: etree._Element, path: str, currency: str) -> str:
    """The amount of `path` in `currency`, or the first one when unspecified."""
    els = [e for e in _xpath(root, path) if isinstance(e, etree._Element)]
    for el in els:
        if currency and el.get("currencyID") == currency:
            return (el.text or "").strip()
    if not currency and els:
        return (els[0].text or "").strip()
    return ""


def _ubl(root: etree._Element, summary: Summary) -> list[PartyIdentifier]:
    summary.profile = _text(root, "cbc:CustomizationID")
    summary.invoice_number = _text(root, "cbc:ID")
    summary.type_code = _text(root, "cbc:InvoiceTypeCode|cbc:CreditNoteTypeCode")
    summary.issue_date = _text(root, "cbc:IssueDate")
    # BT-9: an invoice's DueDate; a credit note has it under PaymentMeans.
    summary.due_date = _text(root, "cbc:DueDate") or _text(root, "cac:PaymentMeans/cbc:PaymentDueDate")
    summary.currency = _text(root, "cbc:DocumentCurrencyCode")
    tax_currency = _text(root, "cbc:TaxCurrencyCode")
    seller = _first(root, "cac:AccountingSupplierParty/cac:Party")
    buyer = _first(root, "cac:AccountingCustomerParty/cac:Party")
    summary.seller_name = _text(seller, "cac:PartyLegalEntity/cbc:RegistrationName")
    summary.buyer_name = _text(buyer, "cac:PartyLegalEntity/cbc:RegistrationName")
    vat = "cac:PartyTaxScheme[normalize-space(cac:TaxScheme/cbc:ID)='VAT']/cbc:CompanyID"
    summary.seller_vat_id = _text(seller, vat)
    summary.buyer_vat_id = _text(buyer, vat)
    seller_ids = _ids(
        seller,
        [
            ("cac:PartyIdentification/cbc:ID", "BT-29", "seller identifier"),
            (
                "cac:PartyLegalEntity/cbc:CompanyID",
                "BT-30",
                "seller legal registration identifier",
            ),
        ],
    )
    buyer_ids = _ids(
        buyer,
        [
            ("cac:PartyIdentification/cbc:ID", "BT-46", "buyer identifier"),
            (
                "cac:PartyLegalEntity/cbc:CompanyID",
                "BT-47",
                "buyer legal registration identifier",
            ),
        ],
    )
    endpoint = _ids(buyer, [("cbc:EndpointID", "BT-49", "buyer electronic address")])
    summary.buyer_reference = _text(root, "cbc:BuyerReference")
    summary.purchase_order_reference = _text(root, "cac:OrderReference/cbc:ID")
    summary.line_count = _count(root, "cac:InvoiceLine|cac:CreditNoteLine")
    totals = _first(root, "cac:LegalMonetaryTotal")
    summary.line_total = _text(totals, "cbc:LineExtensionAmount")
    summary.allowance_total = _text(totals, "cbc:AllowanceTotalAmount")
    summary.charge_total = _text(totals, "cbc:ChargeTotalAmount")
    summary.tax_exclusive_total = _text(totals, "cbc:TaxExclusiveAmount")
    summary.tax_inclusive_total = _text(totals, "cbc:TaxInclusiveAmount")
    summary.prepaid_total = _text(totals, "cbc:PrepaidAmount")
    summary.rounding_amount = _text(totals, "cbc:PayableRoundingAmount")
    summary.payable_amount = _text(totals, "cbc:PayableAmount")
    summary.tax_total = _amount_in(root, "cac:TaxTotal/cbc:TaxAmount", summary.currency)
    if tax_currency and tax_currency != summary.currency:
        summary.tax_total_accounting = _amount_in(root, "cac:TaxTotal/cbc:TaxAmount", tax_currency)
    return _finish(summary, seller_ids, buyer_ids, endpoint)


def _cii(root: etree._Element, summary: Summary) -> list[PartyIdentifier]:
    summary.profile = _text(root, "rsm:ExchangedDocumentContext/ram:GuidelineSpecifiedDocumentContextParameter/ram:ID")
    doc = _first(root, "rsm:ExchangedDocument")
    summary.invoice_number = _text(doc, "ram:ID")
    summary.type_code = _text(doc, "ram:TypeCode")
    date_el = None if doc is None else _first(doc, "ram:IssueDateTime/udt:DateTimeString")
    if date_el is not None:
        summary.issue_date = iso_date_from_cii((date_el.text or "").strip(), (date_el.get("format") or "").strip())
    trade = _first(root, "rsm:SupplyChainTradeTransaction")
    agreement = None if trade is None else _first(trade, "ram:ApplicableHeaderTradeAgreement")
    settlement = None if trade is None else _first(trade, "ram:ApplicableHeaderTradeSettlement")
    summary.currency = _text(settlement, "ram:InvoiceCurrencyCode")
    due_path = "ram:SpecifiedTradePaymentTerms/ram:DueDateDateTime/udt:DateTimeString"
    due_el = None if settlement is None else _first(settlement, due_path)
    if due_el is not None:
        summary.due_date = iso_date_from_cii((due_el.text or "").strip(), (due_el.get("format") or "").strip())
    tax_currency = _text(settlement, "ram:TaxCurrencyCode")
    seller = None if agreement is None else _first(agreement, "ram:SellerTradeParty")
    buyer = None if agreement is None else _first(agreement, "ram:BuyerTradeParty")
    summary.seller_name = _text(seller, "ram:Name")
    summary.buyer_name = _text(buyer, "ram:Name")
    vat = "ram:SpecifiedTaxRegistration/ram:ID[normalize-space(@schemeID)='VA']"
    summary.seller_vat_id = _text(seller, vat)
    summary.buyer_vat_id = _text(buyer, vat)
    seller_ids = _ids(
        seller,
        [
            ("ram:ID|ram:GlobalID", "BT-29", "seller identifier"),
            (
                "ram:SpecifiedLegalOrganization/ram:ID",
                "BT-30",
                "seller legal registration identifier",
            ),
        ],
    )
    buyer_ids = _ids(
        buyer,
        [
            ("ram:ID|ram:GlobalID", "BT-46", "buyer identifier"),
            (
                "ram:SpecifiedLegalOrganization/ram:ID",
                "BT-47",
                "buyer legal registration identifier",
            ),
        ],
    )
    endpoint = _ids(
        buyer,
        [("ram:URIUniversalCommunication/ram:URIID", "BT-49", "buyer electronic address")],
    )
    summary.buyer_reference = _text(agreement, "ram:BuyerReference")
    summary.purchase_order_reference = _text(agreement, "ram:BuyerOrderReferencedDocument/ram:IssuerAssignedID")
    if trade is not None:
        summary.line_count = _count(trade, "ram:IncludedSupplyChainTradeLineItem")
    totals = None if settlement is None else _first(settlement, "ram:SpecifiedTradeSettlementHeaderMonetarySummation")
    summary.line_total = _text(totals, "ram:LineTotalAmount")
    summary.allowance_total = _text(totals, "ram:AllowanceTotalAmount")
    summary.charge_total = _text(totals, "ram:ChargeTotalAmount")
    summary.tax_exclusive_total = _text(totals, "ram:TaxBasisTotalAmount")
    summary.tax_inclusive_total = _text(totals, "ram:GrandTotalAmount")
    summary.prepaid_total = _text(totals, "ram:TotalPrepaidAmount")
    summary.rounding_amount = _text(totals, "ram:RoundingAmount")
    summary.payable_amount = _text(totals, "ram:DuePayableAmount")
    if totals is not None:
        tax_amounts = [e for e in _xpath(totals, "ram:TaxTotalAmount") if isinstance(e, etree._Element)]
        # BT-110 carries the invoice currency; CII profiles below EN 16931
        # often leave currencyID out, then the only amount is BT-110.
        summary.tax_total = _amount_in(totals, "ram:TaxTotalAmount", summary.currency) or (
            (tax_amounts[0].text or "").strip()
            if len(tax_amounts) == 1 and not tax_amounts[0].get("currencyID")
            else ""
        )
        if tax_currency and tax_currency != summary.currency:
            summary.tax_total_accounting = _amount_in(totals, "ram:TaxTotalAmount", tax_currency)
    return _finish(summary, seller_ids, buyer_ids, endpoint)


def _finish(
    summary: Summary,
    seller_ids: list[PartyIdentifier],
    buyer_ids: list[PartyIdentifier],
    endpoint: list[PartyIdentifier],
) -> list[PartyIdentifier]:
    summary.seller_ids = [(i.value, i.scheme) for i in seller_ids]
    summary.buyer_ids = [(i.value, i.scheme) for i in buyer_ids]
    summary.buyer_endpoint = (endpoint[0].value, endpoint[0].scheme) if endpoint else None
    return [*seller_ids, *buyer_ids, *endpoint[:1]]


def extract_summary(root: etree._Element, fmt: str) -> tuple[Summary, list[PartyIdentifier]]:
    """The summary and every party identifier with the business term it fills."""
    summary = Summary()
    identifiers = _cii(root, summary) if fmt == FORMAT_CII else _ubl(root, summary)
    return summary, identifiers
