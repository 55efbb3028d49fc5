"""The engine on well-formed documents: samples, formats, rules, summary."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from invoicing_validate.validation import ValidationReport, Validator

ReadSample = Callable[[str], bytes]


def _fatal_rules(report: ValidationReport) -> set[str]:
    return {f.rule for f in report.findings if f.severity == "fatal"}


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("ubl-invoice-valid.xml", "ubl-invoice"),
        ("ubl-creditnote-valid.xml", "ubl-creditnote"),
        ("cii-invoice-valid.xml", "cii"),
    ],
)
def test_valid_samples_have_no_finding(validator: Validator, read_sample: ReadSample, name: str, fmt: str) -> None:
    report = validator.validate(read_sample(name), filename=name)
    assert report.findings == []
    assert report.valid
    assert report.format == fmt
    assert report.profile == "en16931"


def test_invalid_rules_sample_reports_business_rules(validator: Validator, read_sample: ReadSample) -> None:
    report = validator.validate(read_sample("ubl-invoice-invalid-rules.xml"))
    assert not report.valid
    assert report.format == "ubl-invoice"
    assert {"BR-CO-10", "BR-CO-13", "BR-CO-15", "SIREN"} <= _fatal_rules(report)
    # The document is XSD-valid: only business rules fire.
    assert "XSD" not in report.rules()
    br_co_10 = next(f for f in report.findings if f.rule == "BR-CO-10")
    assert br_co_10.location.startswith("/")
    assert "BT-106" in br_co_10.message
    assert "  " not in br_co_10.message  # whitespace normalised


def test_not_an_invoice_sample_is_rejected(validator: Validator, read_sample: ReadSample) -> None:
    report = validator.validate(read_sample("not-an-invoice.txt"))
    assert not report.valid
    assert report.format == "unknown"
    assert [f.rule for f in report.findings] == ["FORMAT"]
    assert "not XML" in report.findings[0].message


def test_ubl_summary(validator: Validator, read_sample: ReadSample) -> None:
    s = validator.validate(read_sample("ubl-invoice-valid.xml")).summary
    assert s.profile == "urn:cen.eu:en16931:2017"
    assert (s.invoice_number, s.type_code, s.issue_date, s.currency) == (
        "FA-2025-0042",
        "380",
        "2025-03-14",
        "EUR",
    )
    assert s.due_date == "2025-04-13"  # BT-9
    assert s.seller_name == "Atelier Lumière SAS"
    assert s.seller_ids == [("842109373", "0002")]
    assert s.seller_vat_id == "FR88842109373"
    assert s.buyer_name == "Bureaux Alpins SARL"
    assert s.buyer_ids == [("51234567900017", "0009")]
    assert s.buyer_vat_id == "FR75512345679"
    assert s.buyer_endpoint == ("512345679", "0225")
    assert s.buyer_reference == "SERV-ACHATS-17"
    assert s.purchase_order_reference == "PO-2025-1187"
    assert s.line_count == 2
    assert (s.line_total, s.tax_exclusive_total, s.tax_total) == ("690.00", "690.00", "138.00")
    assert (s.tax_inclusive_total, s.payable_amount) == ("828.00", "828.00")
    assert (s.allowance_total, s.charge_total, s.prepaid_total, s.rounding_amount) == (
        "",
        "",
        "",
        "",
    )
    assert s.tax_total_accounting == ""


def test_cii_summary_converts_dates(validator: Validator, read_sample: ReadSample) -> None:
    s = validator.validate(read_sample("cii-invoice-valid.xml")).summary
    assert s.issue_date == "2025-03-14"
    assert s.due_date == "2025-04-13"  # BT-9, format 102
    assert s.invoice_number == "FA-2025-0043"
    assert s.seller_ids == [("842109373", "0002")]
    assert s.buyer_ids == [("51234567900017", "0009")]
    assert s.buyer_endpoint == ("512345679", "0225")
    assert s.buyer_reference == "SERV-ACHATS-17"
    assert s.purchase_order_reference == "PO-2025-1187"
    assert s.line_count == 2
    assert (s.tax_total, s.tax_inclusive_total, s.payable_amount) == ("138.00", "828.00", "828.00")
    assert s.currency == "EUR"


def test_credit_note_summary(validator: Validator, read_sample: ReadSample) -> None:
    s = validator.validate(read_sample("ubl-creditnote-valid.xml")).summary
    assert (s.type_code, s.invoice_number, s.line_count, s.payable_amount) == (
        "381",
        "AV-2025-0007",
        1,
        "108.00",
    )


def test_credit_note_business_rules_fire(validator: Validator, read_sample: ReadSample) -> None:
    data = read_sample("ubl-creditnote-valid.xml").replace(
        b'<cbc:PayableAmount currencyID="EUR">108.00</cbc:PayableAmount>',
        b'<cbc:PayableAmount currencyID="EUR">100.00</cbc:PayableAmount>',
    )
    report = validator.validate(data)
    assert report.format == "ubl-creditnote"
    assert "BR-CO-16" in _fatal_rules(report)


def test_rules_still_run_when_xsd_fails(validator: Validator, read_sample: ReadSample) -> None:
    data = read_sample("ubl-invoice-invalid-rules.xml").replace(
        b"<cbc:BuyerReference>", b"<cbc:NotAUblElement>x</cbc:NotAUblElement><cbc:BuyerReference>"
    )
    report = validator.validate(data)
    fatal = _fatal_rules(report)
    assert "XSD" in fatal
    assert {"BR-CO-10", "BR-CO-15"} <= fatal
    xsd = next(f for f in report.findings if f.rule == "XSD")
    assert "NotAUblElement" in xsd.message


def test_xsd_error_on_cii(validator: Validator, read_sample: ReadSample) -> None:
    data = read_sample("cii-invoice-valid.xml").replace(
        b"<ram:TypeCode>380</ram:TypeCode>", b"<ram:TypeCode>380</ram:TypeCode><ram:Bogus/>"
    )
    report = validator.validate(data)
    assert "XSD" in _fatal_rules(report)


def test_cii_business_rule(validator: Validator, read_sample: ReadSample) -> None:
    data = read_sample("cii-invoice-valid.xml").replace(
        b"<ram:GrandTotalAmount>828.00</ram:GrandTotalAmount>",
        b"<ram:GrandTotalAmount>900.00</ram:GrandTotalAmount>",
    )
    report = validator.validate(data)
    assert "BR-CO-15" in _fatal_rules(report)
    assert report.format == "cii"


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (
            b'<Order xmlns="urn:oasis:names:specification:ubl:schema:xsd:Order-2"/>',
            "root element 'Order' in namespace 'urn:oasis:names:specification:ubl:schema:xsd:Order-2'",
        ),
        (
            b"<Invoice><ID>1</ID></Invoice>",
            "root element 'Invoice' without namespace",
        ),
        (
            b'<rsm:CrossIndustryInvoice xmlns:rsm="urn:example:wrong"/>',
            "root element 'CrossIndustryInvoice' in namespace 'urn:example:wrong'",
        ),
        (
            b'<rsm:CrossIndustryDocument xmlns:rsm="urn:ferd:CrossIndustryDocument:invoice:1p0"/>',
            "ZUGFeRD 1.0 is not supported",
        ),
        (b"<html><body>invoice</body></html>", "root element 'html' without namespace"),
    ],
)
def test_unsupported_xml_is_rejected_naming_the_root(validator: Validator, payload: bytes, expected: str) -> None:
    report = validator.validate(payload)
    assert not report.valid
    assert report.format == "unknown"
    assert [f.rule for f in report.findings] == ["FORMAT"]
    assert expected in report.findings[0].message


def test_fr_ctc_profile_adds_french_rules(validator: Validator, read_sample: ReadSample) -> None:
    report = validator.validate(read_sample("ubl-invoice-valid.xml"), profile="fr-ctc")
    assert report.profile == "fr-ctc"
    assert any(f.rule.startswith("BR-FR-") for f in report.findings)
    # The EN 16931 rules still ran and still pass.
    assert not any(f.rule.startswith("BR-CO-") for f in report.findings)


def test_fr_ctc_from_bt24(validator: Validator, read_sample: ReadSample) -> None:
    data = read_sample("cii-invoice-valid.xml").replace(
        b"<ram:ID>urn:cen.eu:en16931:2017</ram:ID>",
        b"<ram:ID>urn:cen.eu:en16931:2017#compliant#urn.cpro.gouv.fr:1p0:einvoicingF2</ram:ID>",
    )
    report = validator.validate(data)
    assert report.profile == "fr-ctc"
    assert any(f.rule.startswith("BR-FR-") for f in report.findings)


def test_unknown_profile_argument_is_a_caller_error(validator: Validator, read_sample: ReadSample) -> None:
    with pytest.raises(ValueError, match="unknown profile"):
        validator.validate(read_sample("ubl-invoice-valid.xml"), profile="peppol")


def test_invalid_siret_and_siren_are_reported(validator: Validator, read_sample: ReadSample) -> None:
    data = (
        read_sample("ubl-invoice-valid.xml")
        .replace(b">51234567900017<", b">51234567900018<")
        .replace(
            b'<cbc:EndpointID schemeID="0225">512345679</cbc:EndpointID>',
            b'<cbc:EndpointID schemeID="0002">512345678</cbc:EndpointID>',
        )
    )
    report = validator.validate(data)
    siret = [f for f in report.findings if f.rule == "SIRET"]
    siren = [f for f in report.findings if f.rule == "SIREN"]
    assert len(siret) == 1 and len(siren) == 1
    assert "BT-47" in siret[0].message and "51234567900018" in siret[0].message
    assert "BT-49" in siren[0].message and "512345678" in siren[0].message
    assert siret[0].severity == "fatal"
    assert siret[0].location.endswith("cbc:CompanyID[1]")
    assert not report.valid


def test_cii_identifier_checks(validator: Validator, read_sample: ReadSample) -> None:
    data = read_sample("cii-invoice-valid.xml").replace(
        b'<ram:ID schemeID="0002">842109373</ram:ID>', b'<ram:ID schemeID="0002">84210937</ram:ID>'
    )
    report = validator.validate(data)
    siren = [f for f in report.findings if f.rule == "SIREN"]
    assert len(siren) == 1 and "BT-30" in siren[0].message


def test_utf16_invoice_is_accepted(validator: Validator, read_sample: ReadSample) -> None:
    text = read_sample("ubl-invoice-valid.xml").decode("utf-8")
    data = text.replace('encoding="UTF-8"', 'encoding="UTF-16"').encode("utf-16")
    report = validator.validate(data)
    assert report.valid, report.findings
    assert report.summary.seller_name == "Atelier Lumière SAS"


def test_schema_location_is_ignored(validator: Validator, read_sample: ReadSample) -> None:
    data = read_sample("ubl-invoice-valid.xml").replace(
        b'<Invoice xmlns="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2"',
        b'<Invoice xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
        b' xsi:schemaLocation="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2'
        b' file:///nonexistent/evil.xsd"'
        b' xmlns="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2"',
    )
    report = validator.validate(data)
    assert report.valid, report.findings


def test_validate_document_uses_a_shared_validator(read_sample: ReadSample) -> None:
    from invoicing_validate.validation import default_validator, validate_document

    report = validate_document(read_sample("ubl-invoice-valid.xml"), filename="a.xml")
    assert report.valid
    assert default_validator() is default_validator()


def test_report_is_picklable(validator: Validator, read_sample: ReadSample) -> None:
    import pickle

    report = validator.validate(read_sample("ubl-invoice-invalid-rules.xml"))
    assert pickle.loads(pickle.dumps(report)) == report
