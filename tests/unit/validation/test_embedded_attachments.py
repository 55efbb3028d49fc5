"""The files an invoice carries (validation/embedded.py): extracted exactly,
named safely and uniquely, bounded, and listed in the report, valid or not."""

from __future__ import annotations

import base64
import io
import pickle
import zlib
from pathlib import Path

import facturx
import pikepdf
import pytest
from lxml import etree

from invoicing_validate.validation import EmbeddedFile, Finding, Validator, extract_attachments
from invoicing_validate.validation.embedded import ATTACHMENT_RULE, AttachmentCollector
from invoicing_validate.validation.pdf_attachments import read_attached_files, read_invoice_attachment
from tests.unit.validation.pdf_support import Attachment, build_pdf, embedded_file, pdf_string, pdf_with_attachments

SAMPLES = Path(__file__).resolve().parents[3] / "samples"
UBL_NS = (
    b'xmlns="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2"'
    b' xmlns:cac="urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2"'
    b' xmlns:cbc="urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2"'
)
CII_NS = (
    b'xmlns:rsm="urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100"'
    b' xmlns:ram="urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:100"'
)
# Bytes that survive no lax decoding: every byte value, and a PDF header.
ALL_BYTES = bytes(range(256)) * 3
PDF_BYTES = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< >>\nendobj\n"
CSV_BYTES = "date;heures\r\n2025-03-03;7,5\r\nsemaine 10;37,5 — fin\r\n".encode()


# `validator` and `blank_pdf` come from this folder's conftest.py.


def wrapped_base64(data: bytes) -> bytes:
    """Base64 the way producers write it: 76-character lines, CRLF, indented."""
    return b"\r\n        ".join(base64.encodebytes(data).split(b"\n"))


def ubl_reference(content: bytes, attributes: bytes, number: int = 1) -> bytes:
    return (
        b"<cac:AdditionalDocumentReference><cbc:ID>ATT-%d</cbc:ID><cac:Attachment>" % number
        + b"<cbc:EmbeddedDocumentBinaryObject "
        + attributes
        + b">"
        + content
        + b"</cbc:EmbeddedDocumentBinaryObject></cac:Attachment></cac:AdditionalDocumentReference>"
    )


def ubl_with(*objects: tuple[bytes, bytes]) -> bytes:
    """A bare UBL Invoice carrying these (attributes, base64 content) objects."""
    references = b"".join(ubl_reference(content, attrs, n) for n, (attrs, content) in enumerate(objects, 1))
    return b"<Invoice " + UBL_NS + b"><cbc:ID>T-1</cbc:ID>" + references + b"</Invoice>"


def sample_ubl_with(references: bytes) -> bytes:
    # BG-24 comes after the order reference and before the seller in UBL's sequence.
    xml = (SAMPLES / "ubl-invoice-valid.xml").read_bytes()
    return xml.replace(b"  <cac:AccountingSupplierParty>", references + b"\n  <cac:AccountingSupplierParty>", 1)


def cii_reference(content: bytes, attributes: bytes) -> bytes:
    return (
        b"<ram:AdditionalReferencedDocument><ram:IssuerAssignedID>TS-10</ram:IssuerAssignedID>"
        b"<ram:TypeCode>916</ram:TypeCode><ram:Name>Timesheet</ram:Name>"
        b"<ram:AttachmentBinaryObject " + attributes + b">" + content + b"</ram:AttachmentBinaryObject>"
        b"</ram:AdditionalReferencedDocument>"
    )


def sample_cii_with(reference: bytes) -> bytes:
    xml = (SAMPLES / "cii-invoice-valid.xml").read_bytes()
    end = b"</ram:BuyerOrderReferencedDocument>"
    return xml.replace(end, end + reference, 1)


def facturx_pdf(blank_pdf: bytes, xml: bytes, attachments: dict[str, bytes] | None = None) -> bytes:
    extra = {name: {"filedata": data} for name, data in (attachments or {}).items()}
    pdf: bytes = facturx.generate_from_binary(blank_pdf, xml, check_xsd=False, attachments=extra or None)
    return pdf


def attachment_warnings(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.rule == ATTACHMENT_RULE]


def test_ubl_with_two_attachments(validator: Validator) -> None:
    xml = sample_ubl_with(
        ubl_reference(wrapped_base64(PDF_BYTES), b'mimeCode="application/pdf" filename="bon-de-livraison.pdf"', 1)
        + ubl_reference(wrapped_base64(CSV_BYTES), 'mimeCode="text/csv" filename="relevé heures.csv"'.encode(), 2)
    )
    report = validator.validate(xml)
    assert report.valid, report.findings
    assert report.findings == []
    assert report.attachments == [
        EmbeddedFile(name="bon-de-livraison.pdf", media_type="application/pdf", data=PDF_BYTES),
        EmbeddedFile(name="relevé heures.csv", media_type="text/csv", data=CSV_BYTES),
    ]


def test_ubl_credit_note_attachments_are_extracted() -> None:
    content = base64.b64encode(ALL_BYTES)
    xml = (
        b'<CreditNote xmlns="urn:oasis:names:specification:ubl:schema:xsd:CreditNote-2"'
        b' xmlns:cac="urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2"'
        b' xmlns:cbc="urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2">'
        + ubl_reference(content, b'mimeCode="image/png" filename="scan.png"')
        + b"</CreditNote>"
    )
    assert extract_attachments(xml) == [EmbeddedFile("scan.png", "image/png", ALL_BYTES)]


def test_cii_with_one_attachment(validator: Validator) -> None:
    xml = sample_cii_with(cii_reference(wrapped_base64(CSV_BYTES), b'mimeCode="text/csv" filename="timesheet.csv"'))
    report = validator.validate(xml)
    assert report.format == "cii"
    assert report.valid, report.findings
    assert report.attachments == [EmbeddedFile(name="timesheet.csv", media_type="text/csv", data=CSV_BYTES)]


def test_facturx_pdf_lists_its_xml_its_attached_file_and_the_xml_attachments(
    validator: Validator, blank_pdf: bytes
) -> None:
    xml = sample_cii_with(cii_reference(base64.b64encode(PDF_BYTES), b'mimeCode="application/pdf" filename="bl.pdf"'))
    pdf = facturx_pdf(blank_pdf, xml, {"releve.csv": CSV_BYTES})
    report = validator.validate(pdf)
    assert report.format == "facturx-pdf"
    assert report.valid, report.findings
    assert [(a.name, a.media_type) for a in report.attachments] == [
        ("factur-x.xml", "text/xml"),
        ("releve.csv", "text/csv"),
        ("bl.pdf", "application/pdf"),
    ]
    invoice_xml, csv, bl = (a.data for a in report.attachments)
    # The XML listed is the one validated: it parses to the document embedded.
    assert etree.tostring(etree.fromstring(invoice_xml)) == etree.tostring(etree.fromstring(xml))
    assert csv == CSV_BYTES
    assert bl == PDF_BYTES
    assert extract_attachments(pdf) == report.attachments


def test_pdf_without_a_subtype_gets_its_type_from_the_name() -> None:
    xml = (SAMPLES / "cii-invoice-valid.xml").read_bytes()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R /Names << /EmbeddedFiles << /Names [(factur-x.xml) 4 0 R] >> >> >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] >>",
        b"<< /Type /Filespec /F (factur-x.xml) /EF << /F 5 0 R >> >>",
        b"<< /Type /EmbeddedFile /Length %d >>\nstream\n" % len(xml) + xml + b"\nendstream",
    ]
    files = extract_attachments(build_pdf(objects))
    assert [(f.name, f.media_type) for f in files] == [("factur-x.xml", "text/xml")]
    assert files[0].data == xml


def test_same_pdf_stream_listed_twice_is_one_file() -> None:
    xml = (SAMPLES / "cii-invoice-valid.xml").read_bytes()
    # In the name tree and /AF (as Factur-X asks), and a deflated copy.
    pdf = pdf_with_attachments([Attachment("factur-x.xml", xml, uf_data=xml, deflate=True)])
    assert [(f.name, f.data) for f in extract_attachments(pdf)] == [("factur-x.xml", xml)]


def test_missing_filename_gets_a_generated_name() -> None:
    xml = ubl_with(
        (b'mimeCode="application/pdf"', base64.b64encode(PDF_BYTES)),
        (b'filename=""', base64.b64encode(b"no type, no name")),
        (b'mimeCode="not a type" filename="notes.txt"', base64.b64encode(b"typed by its name")),
        (b'filename="heures.XLSX"', base64.b64encode(b"PK")),
        (b'mimeCode="application/xml; charset=utf-8"', base64.b64encode(b"<a/>")),
    )
    assert extract_attachments(xml) == [
        EmbeddedFile("attachment-1.pdf", "application/pdf", PDF_BYTES),
        EmbeddedFile("attachment-2.bin", "application/octet-stream", b"no type, no name"),
        EmbeddedFile("notes.txt", "text/plain", b"typed by its name"),
        EmbeddedFile("heures.XLSX", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", b"PK"),
        EmbeddedFile("attachment-5.xml", "application/xml", b"<a/>"),
    ]


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        (b"../../etc/passwd", "passwd"),
        (b"/etc/passwd", "passwd"),
        (b"C:\\Users\\compta\\facture.pdf", "facture.pdf"),
        (b"rapport/..", "attachment-1.pdf"),
        (b"dossier/", "attachment-1.pdf"),
        (b"   ", "attachment-1.pdf"),
        (b"facture&#10;.pdf", "attachment-1.pdf"),  # a character reference keeps the newline
        (b"facture&#x7f;.pdf", "attachment-1.pdf"),
        ("devis\u202efdp.exe".encode(), "attachment-1.pdf"),  # shows as "devisexe.pdf"
        (b"a" * 252 + b".pdf", "attachment-1.pdf"),
        ("\u00e9".encode() * 126 + b".pdf", "attachment-1.pdf"),  # 126 characters but 256 bytes
        ("  espac\u00e9.pdf  ".encode(), "espac\u00e9.pdf"),
    ],
)
def test_unsafe_filename_is_replaced(filename: bytes, expected: str) -> None:
    xml = ubl_with((b'mimeCode="application/pdf" filename="' + filename + b'"', base64.b64encode(PDF_BYTES)))
    files = extract_attachments(xml)
    assert [f.name for f in files] == [expected]
    assert files[0].data == PDF_BYTES


def test_duplicate_names_are_made_unique() -> None:
    content = base64.b64encode(b"x")
    xml = ubl_with(
        (b'filename="scan.pdf"', content),
        (b'filename="scan.pdf"', content),
        (b'filename="SCAN.PDF"', content),
        (b'filename="scan-2.pdf"', content),
        (b'filename="archive.tar.gz"', content),
        (b'filename="archive.tar.gz"', content),
        (b'filename=".profile"', content),
        (b'filename=".profile"', content),
    )
    assert [f.name for f in extract_attachments(xml)] == [
        "scan.pdf",
        "scan-2.pdf",
        "SCAN-3.PDF",
        "scan-2-2.pdf",
        "archive.tar.gz",
        "archive.tar-2.gz",
        ".profile",
        ".profile-2",
    ]


def test_generated_name_does_not_collide_with_a_given_one() -> None:
    content = base64.b64encode(b"x")
    xml = ubl_with((b'filename="attachment-2.pdf"', content), (b'mimeCode="application/pdf"', content))
    assert [f.name for f in extract_attachments(xml)] == ["attachment-2.pdf", "attachment-2-2.pdf"]


def test_long_name_stays_within_255_bytes_when_suffixed() -> None:
    name = "é" * 125 + ".pdf"  # 254 bytes
    content = base64.b64encode(b"x")
    files = extract_attachments(ubl_with(*[(b'filename="%s"' % name.encode(), content)] * 2))
    assert files[0].name == name
    assert files[1].name.endswith("-2.pdf")
    assert len(files[1].name.encode()) <= 255


@pytest.mark.parametrize(
    "content",
    [
        b"SGVsbG8gd29ybGQ",  # padding missing
        b"SGVsbG8*d29ybGQ=",  # outside the alphabet
        b"SGVs bG8g\xc2\xa0d29y bGQ=",  # a no-break space is not XML whitespace
        b"SGVsbG8gd29ybGQ=SGVs",  # data after the padding
        b"  \r\n ",  # nothing at all
    ],
)
def test_malformed_base64_is_skipped_with_a_warning(validator: Validator, content: bytes) -> None:
    xml = sample_ubl_with(
        ubl_reference(content, b'mimeCode="application/pdf" filename="bad.pdf"', 1)
        + ubl_reference(base64.b64encode(PDF_BYTES), b'mimeCode="application/pdf" filename="good.pdf"', 2)
    )
    report = validator.validate(xml)
    # The XSD says whether the invoice is acceptable (xs:base64Binary is
    # laxer than our decoding); extraction only leaves the file out.
    assert [f.rule for f in report.fatal_findings] in ([], ["XSD"])
    assert [a.name for a in report.attachments] == ["good.pdf"]
    [warning] = attachment_warnings(report.findings)
    assert warning.severity == "warning"
    assert "'bad.pdf'" in warning.message
    assert warning.location == "/*/cac:AdditionalDocumentReference[1]/cac:Attachment/cbc:EmbeddedDocumentBinaryObject"


def test_no_attachments(validator: Validator, blank_pdf: bytes) -> None:
    for name in ("ubl-invoice-valid.xml", "ubl-creditnote-valid.xml", "cii-invoice-valid.xml"):
        report = validator.validate((SAMPLES / name).read_bytes())
        assert report.attachments == [], name
        assert attachment_warnings(report.findings) == [], name
    report = validator.validate(facturx_pdf(blank_pdf, (SAMPLES / "cii-invoice-valid.xml").read_bytes()))
    assert [a.name for a in report.attachments] == ["factur-x.xml"]


def test_unreadable_documents_have_no_attachments(validator: Validator, blank_pdf: bytes) -> None:
    for data in (b"", b"not xml", b"<a/>", (SAMPLES / "not-an-invoice.txt").read_bytes(), blank_pdf):
        assert validator.validate(data).attachments == []
        assert extract_attachments(data) == []


def test_invalid_invoice_still_lists_its_attachments(validator: Validator) -> None:
    xml = sample_ubl_with(
        ubl_reference(base64.b64encode(PDF_BYTES), b'mimeCode="application/pdf" filename="bl.pdf"')
    ).replace(b"<cbc:InvoiceTypeCode>380</cbc:InvoiceTypeCode>", b"<cbc:InvoiceTypeCode>999</cbc:InvoiceTypeCode>")
    report = validator.validate(xml)
    assert not report.valid
    assert report.attachments == [EmbeddedFile("bl.pdf", "application/pdf", PDF_BYTES)]


def test_broken_xml_inside_a_pdf_still_lists_the_pdf_files(validator: Validator) -> None:
    pdf = pdf_with_attachments([Attachment("factur-x.xml", b"<broken"), Attachment("notes.txt", b"hello")])
    report = validator.validate(pdf)
    assert "PARSE" in report.rules("fatal")
    assert [(a.name, a.data) for a in report.attachments] == [("factur-x.xml", b"<broken"), ("notes.txt", b"hello")]


def test_undecodable_pdf_attachment_is_skipped_with_a_warning(validator: Validator) -> None:
    xml = (SAMPLES / "cii-invoice-valid.xml").read_bytes()
    bomb = zlib.compress(b"\0" * (21 * 1024 * 1024), 9)  # over the 20 MiB a stream may decode to
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R /Names << /EmbeddedFiles << /Names"
        b" [(factur-x.xml) 4 0 R (zeros.bin) 6 0 R (external.pdf) 8 0 R] >> >> >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] >>",
        b"<< /Type /Filespec /F (factur-x.xml) /EF << /F 5 0 R >> >>",
        embedded_file(xml),
        b"<< /Type /Filespec /UF " + pdf_string("zeros.bin") + b" /EF << /F 7 0 R >> >>",
        embedded_file(bomb, b" /Filter /FlateDecode"),
        b"<< /Type /Filespec /F (external.pdf) >>",
    ]
    report = validator.validate(build_pdf(objects))
    assert report.valid, report.findings
    assert [a.name for a in report.attachments] == ["factur-x.xml"]
    warnings = {f.location: f.message for f in attachment_warnings(report.findings)}
    assert set(warnings) == {"zeros.bin", "external.pdf"}
    assert "more than the accepted size" in warnings["zeros.bin"]
    assert "no embedded stream" in warnings["external.pdf"]


def test_number_of_files_is_bounded() -> None:
    xml = ubl_with(*[(b'filename="f.txt"', base64.b64encode(b"%d" % n)) for n in range(5)])
    collector = AttachmentCollector(max_files=3)
    root = etree.fromstring(xml)
    collector.add_from_tree(root, "ubl-invoice")
    assert [f.data for f in collector.files] == [b"0", b"1", b"2"]
    assert [f.rule for f in collector.findings] == [ATTACHMENT_RULE]
    assert "more than 3 files" in collector.findings[0].message


def test_total_size_is_bounded() -> None:
    xml = ubl_with(*[(b'filename="f.bin"', base64.b64encode(b"x" * size)) for size in (60, 60, 30)])
    collector = AttachmentCollector(max_bytes=100)
    collector.add_from_tree(etree.fromstring(xml), "ubl-invoice")
    assert [len(f.data) for f in collector.files] == [60, 30]
    [warning] = collector.findings
    assert "exceed 100 bytes" in warning.message


def test_pdf_files_are_bounded_before_they_are_decoded() -> None:
    pdf = pdf_with_attachments([Attachment(f"f{n}.txt", b"%d" % n, deflate=True) for n in range(5)])
    with pikepdf.open(io.BytesIO(pdf)) as opened:
        attached = read_attached_files(opened, max_files=2, max_bytes=1000)
    assert [f.name for f in attached.files] == ["f0.txt", "f1.txt"]
    assert [why for _, why in attached.skipped] == ["the PDF attaches more than 2 files; the rest are not extracted"]


def test_the_invoice_xml_is_decoded_once_for_both_reads() -> None:
    xml = b"<Invoice>" + b"x" * 200 + b"</Invoice>"
    pdf = pdf_with_attachments([Attachment("factur-x.xml", xml, deflate=True), Attachment("a.txt", b"a", deflate=True)])
    with pikepdf.open(io.BytesIO(pdf)) as opened:
        invoice = read_invoice_attachment(opened)
        attached = read_attached_files(opened, max_files=10, max_bytes=10_000, decoded=invoice.decoded)
    assert [(f.name, f.data) for f in attached.files] == [("factur-x.xml", xml), ("a.txt", b"a")]
    # The very bytes the first read decoded: a second decoding makes new ones.
    assert attached.files[0].data is invoice.xml


def test_report_with_attachments_pickles(validator: Validator) -> None:
    # Reports cross the pipe from the worker processes.
    xml = sample_ubl_with(ubl_reference(base64.b64encode(ALL_BYTES), b'mimeCode="image/png" filename="a.png"'))
    report = validator.validate(xml)
    assert pickle.loads(pickle.dumps(report)) == report
    assert report.attachments[0].data == ALL_BYTES
