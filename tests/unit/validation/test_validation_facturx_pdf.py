"""Factur-X / ZUGFeRD PDFs, built in the test with the factur-x library, pypdf or
by hand (pdf_support) where a hostile layout is needed."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import facturx
import pytest
from pypdf import PdfReader

from invoicing_validate.validation import Validator
from tests.unit.validation.pdf_support import Attachment, pdf_with_attachments

ReadSample = Callable[[str], bytes]

MINIMUM_CII = b"""<?xml version="1.0" encoding="UTF-8"?>
<rsm:CrossIndustryInvoice
    xmlns:rsm="urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100"
    xmlns:qdt="urn:un:unece:uncefact:data:standard:QualifiedDataType:100"
    xmlns:ram="urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:100"
    xmlns:udt="urn:un:unece:uncefact:data:standard:UnqualifiedDataType:100">
  <rsm:ExchangedDocumentContext>
    <ram:GuidelineSpecifiedDocumentContextParameter>
      <ram:ID>urn:factur-x.eu:1p0:minimum</ram:ID>
    </ram:GuidelineSpecifiedDocumentContextParameter>
  </rsm:ExchangedDocumentContext>
  <rsm:ExchangedDocument>
    <ram:ID>FM-2025-0001</ram:ID>
    <ram:TypeCode>380</ram:TypeCode>
    <ram:IssueDateTime>
      <udt:DateTimeString format="102">20250314</udt:DateTimeString>
    </ram:IssueDateTime>
  </rsm:ExchangedDocument>
  <rsm:SupplyChainTradeTransaction>
    <ram:ApplicableHeaderTradeAgreement>
      <ram:BuyerReference>SERV-ACHATS-17</ram:BuyerReference>
      <ram:SellerTradeParty>
        <ram:Name>Atelier Lumiere SAS</ram:Name>
        <ram:SpecifiedLegalOrganization>
          <ram:ID schemeID="0002">842109373</ram:ID>
        </ram:SpecifiedLegalOrganization>
        <ram:PostalTradeAddress>
          <ram:CountryID>FR</ram:CountryID>
        </ram:PostalTradeAddress>
        <ram:SpecifiedTaxRegistration>
          <ram:ID schemeID="VA">FR88842109373</ram:ID>
        </ram:SpecifiedTaxRegistration>
      </ram:SellerTradeParty>
      <ram:BuyerTradeParty>
        <ram:Name>Bureaux Alpins SARL</ram:Name>
        <ram:SpecifiedLegalOrganization>
          <ram:ID schemeID="0002">512345679</ram:ID>
        </ram:SpecifiedLegalOrganization>
      </ram:BuyerTradeParty>
      <ram:BuyerOrderReferencedDocument>
        <ram:IssuerAssignedID>PO-2025-1187</ram:IssuerAssignedID>
      </ram:BuyerOrderReferencedDocument>
    </ram:ApplicableHeaderTradeAgreement>
    <ram:ApplicableHeaderTradeDelivery/>
    <ram:ApplicableHeaderTradeSettlement>
      <ram:InvoiceCurrencyCode>EUR</ram:InvoiceCurrencyCode>
      <ram:SpecifiedTradeSettlementHeaderMonetarySummation>
        <ram:TaxBasisTotalAmount>690.00</ram:TaxBasisTotalAmount>
        <ram:TaxTotalAmount currencyID="EUR">138.00</ram:TaxTotalAmount>
        <ram:GrandTotalAmount>828.00</ram:GrandTotalAmount>
        <ram:DuePayableAmount>828.00</ram:DuePayableAmount>
      </ram:SpecifiedTradeSettlementHeaderMonetarySummation>
    </ram:ApplicableHeaderTradeSettlement>
  </rsm:SupplyChainTradeTransaction>
</rsm:CrossIndustryInvoice>
"""

BT24_EN16931 = b"<ram:ID>urn:cen.eu:en16931:2017</ram:ID>"


def _facturx_pdf(blank_pdf: bytes, xml: bytes, level: str = "autodetect") -> bytes:
    pdf: bytes = facturx.generate_from_binary(blank_pdf, xml, level=level, check_xsd=False)
    return pdf


def _fatal(report_findings: list[object]) -> list[object]:
    return [f for f in report_findings if getattr(f, "severity", "") == "fatal"]


def test_en16931_pdf_is_valid(validator: Validator, read_sample: ReadSample, blank_pdf: bytes) -> None:
    pdf = _facturx_pdf(blank_pdf, read_sample("cii-invoice-valid.xml"))
    report = validator.validate(pdf, filename="invoice.pdf")
    assert report.format == "facturx-pdf"
    assert report.profile == "en16931"
    assert report.valid, report.findings
    assert report.findings == []
    assert report.summary.invoice_number == "FA-2025-0043"
    assert report.summary.issue_date == "2025-03-14"


@pytest.mark.parametrize(
    ("bt24", "profile"),
    [
        (b"urn:cen.eu:en16931:2017#compliant#urn:factur-x.eu:1p0:basic", "basic"),
        (b"urn:cen.eu:en16931:2017#conformant#urn:factur-x.eu:1p0:extended", "extended"),
    ],
)
def test_profile_pdfs_report_their_profile(
    validator: Validator, read_sample: ReadSample, blank_pdf: bytes, bt24: bytes, profile: str
) -> None:
    xml = read_sample("cii-invoice-valid.xml").replace(BT24_EN16931, b"<ram:ID>" + bt24 + b"</ram:ID>")
    report = validator.validate(_facturx_pdf(blank_pdf, xml))
    assert report.format == "facturx-pdf"
    assert report.profile == profile
    assert report.valid, report.findings


def test_minimum_pdf(validator: Validator, blank_pdf: bytes) -> None:
    report = validator.validate(_facturx_pdf(blank_pdf, MINIMUM_CII))
    assert report.profile == "minimum"
    assert report.valid, report.findings
    assert report.summary.line_count == 0
    assert report.summary.payable_amount == "828.00"
    assert report.summary.tax_total == "138.00"


def test_minimum_profile_rules_fire(validator: Validator, blank_pdf: bytes) -> None:
    xml = MINIMUM_CII.replace(b"<ram:TypeCode>380</ram:TypeCode>", b"<ram:TypeCode>999</ram:TypeCode>")
    report = validator.validate(_facturx_pdf(blank_pdf, xml))
    assert not report.valid
    assert report.profile == "minimum"


def test_minimum_xml_without_pdf(validator: Validator) -> None:
    report = validator.validate(MINIMUM_CII)
    assert report.format == "cii"
    assert report.profile == "minimum"
    assert report.valid, report.findings


def test_business_rule_failure_inside_pdf(validator: Validator, read_sample: ReadSample, blank_pdf: bytes) -> None:
    xml = read_sample("cii-invoice-valid.xml").replace(
        b"<ram:GrandTotalAmount>828.00</ram:GrandTotalAmount>",
        b"<ram:GrandTotalAmount>900.00</ram:GrandTotalAmount>",
    )
    report = validator.validate(_facturx_pdf(blank_pdf, xml))
    assert report.format == "facturx-pdf"
    assert "BR-CO-15" in report.rules("fatal")
    # CEN and Factur-X schematrons both carry BR-CO-15: reported once.
    assert len([f for f in report.findings if f.rule == "BR-CO-15"]) == 1


def test_xmp_level_mismatch_is_a_warning(validator: Validator, blank_pdf: bytes) -> None:
    pdf = _facturx_pdf(blank_pdf, MINIMUM_CII, level="basic")
    report = validator.validate(pdf)
    assert report.profile == "minimum"
    assert "FACTURX-XMP" in report.rules("warning")
    assert report.valid


@pytest.mark.parametrize("user_password", ["", "secret"])
def test_encrypted_pdf_is_refused(
    validator: Validator, read_sample: ReadSample, blank_pdf: bytes, user_password: str
) -> None:
    # With an empty user password any reader opens it; with another, none can.
    # PDF/A-3 forbids encryption either way.
    import pikepdf

    pdf = _facturx_pdf(blank_pdf, read_sample("cii-invoice-valid.xml"))
    out = io.BytesIO()
    with pikepdf.open(io.BytesIO(pdf)) as opened:
        opened.save(out, encryption=pikepdf.Encryption(owner="owner", user=user_password))
    report = validator.validate(out.getvalue())
    assert [(f.rule, f.message) for f in report.findings] == [
        ("FORMAT", "PDF is encrypted; a Factur-X PDF/A-3 cannot be")
    ]


def test_pdf_without_embedded_xml(validator: Validator, blank_pdf: bytes) -> None:
    report = validator.validate(blank_pdf)
    assert not report.valid
    assert report.format == "facturx-pdf"
    assert [f.rule for f in report.findings] == ["FORMAT"]
    assert "no embedded factur-x.xml" in report.findings[0].message


def test_pdf_with_other_attachment_names_it(validator: Validator, blank_pdf: bytes) -> None:
    import io

    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(blank_pdf)))
    writer.add_attachment("notes.txt", b"hello")
    out = io.BytesIO()
    writer.write(out)
    report = validator.validate(out.getvalue())
    assert report.findings[0].rule == "FORMAT"
    assert "notes.txt" in report.findings[0].message


def test_pdf_embedding_ubl_is_rejected(validator: Validator, read_sample: ReadSample, blank_pdf: bytes) -> None:
    import io

    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(blank_pdf)))
    writer.add_attachment("factur-x.xml", read_sample("ubl-invoice-valid.xml"))
    out = io.BytesIO()
    writer.write(out)
    report = validator.validate(out.getvalue())
    assert [f.rule for f in report.findings] == ["FORMAT"]
    assert "embeds a ubl-invoice" in report.findings[0].message


def test_zugferd_file_name_is_found(validator: Validator, read_sample: ReadSample, blank_pdf: bytes) -> None:
    import io

    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(blank_pdf)))
    writer.add_attachment("ZUGFeRD-invoice.xml", read_sample("cii-invoice-valid.xml"))
    out = io.BytesIO()
    writer.write(out)
    report = validator.validate(out.getvalue())
    assert report.valid, report.findings
    assert report.format == "facturx-pdf"


def _other_seller(xml: bytes) -> bytes:
    changed = xml.replace("Atelier Lumière SAS".encode(), b"Contrefacon SARL").replace(b"842109373", b"732829320")
    assert changed != xml
    return changed


def test_second_different_invoice_xml_is_rejected(validator: Validator, read_sample: ReadSample) -> None:
    xml = read_sample("cii-invoice-valid.xml")
    pdf = pdf_with_attachments([Attachment("factur-x.xml", xml), Attachment("xrechnung.xml", _other_seller(xml))])
    report = validator.validate(pdf)
    assert not report.valid
    assert report.format == "facturx-pdf"
    [finding] = report.findings
    assert finding.rule == "FACTURX-AMBIGUOUS"
    assert finding.severity == "fatal"
    assert finding.location == "factur-x.xml, xrechnung.xml"
    assert finding.message == (
        "the PDF carries 2 different invoice XML attachments (factur-x.xml, xrechnung.xml): exactly one is allowed"
    )
    # Neither invoice was taken as the document: no seller is reported.
    assert report.summary.seller_name == ""


# Each builds the attachments from the validated invoice and an unchecked one.
Placement = Callable[[bytes, bytes], list[Attachment]]
HIDING_PLACES: dict[str, Placement] = {
    "same name, /AF only": lambda real, other: [
        Attachment("factur-x.xml", real),
        Attachment("factur-x.xml", other, in_tree=False),
    ],
    "ZUGFeRD name, tree only": lambda real, other: [
        Attachment("factur-x.xml", real),
        Attachment("ZUGFeRD-invoice.xml", other, in_af=False),
    ],
    "Order-X name": lambda real, other: [Attachment("factur-x.xml", real), Attachment("ORDER-X.XML", other)],
    "second stream under /EF /UF": lambda real, other: [Attachment("factur-x.xml", real, uf_data=other)],
    "innocuous name-tree key": lambda real, other: [
        Attachment("factur-x.xml", real),
        Attachment("factur-x.xml", other, tree_key="notes.txt", in_af=False),
    ],
}


@pytest.mark.parametrize("place", HIDING_PLACES.values(), ids=HIDING_PLACES.keys())
def test_hidden_second_invoice_xml_is_rejected(validator: Validator, read_sample: ReadSample, place: Placement) -> None:
    xml = read_sample("cii-invoice-valid.xml")
    report = validator.validate(pdf_with_attachments(place(xml, _other_seller(xml))))
    assert not report.valid
    assert [f.rule for f in report.findings] == ["FACTURX-AMBIGUOUS"]
    assert "2 different invoice XML attachments" in report.findings[0].message


def test_normal_facturx_pdf_lists_one_file_twice(
    validator: Validator, read_sample: ReadSample, blank_pdf: bytes
) -> None:
    pdf = _facturx_pdf(blank_pdf, read_sample("cii-invoice-valid.xml"))
    # What the factur-x library writes, as Factur-X asks: one file specification,
    # in the /EmbeddedFiles name tree and in /AF.
    catalog: Any = PdfReader(io.BytesIO(pdf)).trailer["/Root"]
    [name, tree_ref] = catalog["/Names"]["/EmbeddedFiles"]["/Names"]
    [af_ref] = catalog["/AF"]
    assert name == "factur-x.xml"
    assert (tree_ref.idnum, tree_ref.generation) == (af_ref.idnum, af_ref.generation)
    report = validator.validate(pdf)
    assert report.valid, report.findings
    assert report.findings == []
    assert report.summary.seller_name == "Atelier Lumière SAS"


def test_identical_copies_are_accepted(validator: Validator, read_sample: ReadSample) -> None:
    xml = read_sample("cii-invoice-valid.xml")
    # Separate streams, one compressed: the decoded bytes are what is compared.
    pdf = pdf_with_attachments(
        [Attachment("factur-x.xml", xml), Attachment("xrechnung.xml", xml, deflate=True, uf_data=xml, in_af=False)]
    )
    report = validator.validate(pdf)
    assert report.valid, report.findings
    assert report.summary.seller_name == "Atelier Lumière SAS"


def test_order_x_alone_is_not_an_invoice(validator: Validator, read_sample: ReadSample) -> None:
    report = validator.validate(pdf_with_attachments([Attachment("order-x.xml", read_sample("cii-invoice-valid.xml"))]))
    assert [f.rule for f in report.findings] == ["FORMAT"]
    assert "no embedded factur-x.xml" in report.findings[0].message
