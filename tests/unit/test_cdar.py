"""CDAR lifecycle messages: built, read back and checked with the official
BR-FR-CDV rules (1.2.0 and 1.3.0, the compiled XSLT as published)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from lxml import etree

from invoicing_common.cdar import (
    DEFAULT_MAX_BYTES,
    PHASE_PROCESSING,
    PHASE_TRANSMISSION,
    CdarError,
    CdvRules,
    CdvRulesMissing,
    Finding,
    InvoiceRef,
    LifecycleMessage,
    Party,
    Reason,
    from_xml,
    to_xml,
)
from invoicing_common.cdar.names import NSMAP, RAM, UDT
from invoicing_common.rules import load_book
from invoicing_common.schematron import artefacts_dir

RELEASES = ("1.2.0", "1.3.0")
LIFECYCLE_STATUSES = (*range(200, 215), 220, 221, *range(224, 229), 501)
# A reason each status's official list allows (BR-FR-CDV-CL-09); the
# statuses of BR-FR-CDV-15 must have one, 221 may.
REASONS = {
    206: "QTE_ERR",
    207: "TX_TVA_ERR",
    208: "JUSTIF_ABS",
    210: "DOUBLON",
    213: "REJ_SEMAN",
    221: "ROUTAGE_ERR",
    501: "IRR_SYNTAX",
}
REASON_REQUIRED = (206, 207, 208, 210, 213, 501)
# Statuses the seller sets; the buyer sets the other processing ones.
SELLER_STATUSES = frozenset({209, 212, 220})

OUR_PLATFORM = Party(role="WK", global_id="0042", scheme="0238", name="Plateforme A")
OTHER_PLATFORM = Party(role="WK", global_id="0077", scheme="0238", name="Plateforme B")
SELLER = Party(role="SE", global_id="100000009", scheme="0002", name="VENDEUR", uri="100000009", uri_scheme="0225")
BUYER = Party(role="BY", global_id="200000008", scheme="0002", name="ACHETEUR", uri="200000008", uri_scheme="0225")
INVOICE = InvoiceRef(number="F2026-0001", issue_date=dt.date(2026, 3, 1), seller_siren="100000009", type_code="380")
ISSUED_AT = dt.datetime(2026, 3, 2, 9, 30, 15, tzinfo=dt.UTC)


def message_for(status: int, **changes: object) -> LifecycleMessage:
    """A message as the platform would send it for ``status``."""
    if status in (200, 201, 202, 203, 213, 221, 501):
        # A platform sets the transmission statuses; it is the sender already.
        issuer, recipients = Party(role="WK", name="Plateforme A"), (OTHER_PLATFORM,)
    elif status in SELLER_STATUSES:
        issuer, recipients = SELLER, (BUYER,)
    else:
        issuer, recipients = BUYER, (SELLER,)
    fields: dict[str, object] = {
        "message_id": f"CDV-{status}-0001",
        "issued_at": ISSUED_AT,
        "status_code": status,
        "invoice": INVOICE,
        "sender": OUR_PLATFORM,
        "issuer": issuer,
        "recipients": recipients,
        "reasons": (Reason(REASONS[status], f"Motif {REASONS[status]}"),) if status in REASONS else (),
    }
    if status == 212:
        fields |= {"amount": Decimal("1200.00"), "currency": "EUR"}
    fields |= changes
    return LifecycleMessage(**fields)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def rules() -> dict[str, CdvRules]:
    # Compiled once for the module: compiling is the expensive part.
    book = load_book()
    return {version: CdvRules.of(book.get(version)) for version in RELEASES}


def rule_ids(findings: list[Finding]) -> set[str]:
    return {finding.rule for finding in findings}


def without(data: bytes, path: str) -> bytes:
    """``data`` without the element at ``path`` (an XPath with prefixes)."""
    root = etree.fromstring(data)
    (element,) = root.xpath(path, namespaces=NSMAP)
    element.getparent().remove(element)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


# -- Built messages pass the official rules ---------------------------------


@pytest.mark.parametrize("version", RELEASES)
@pytest.mark.parametrize("status", LIFECYCLE_STATUSES)
def test_every_status_passes_the_official_rules(rules: dict[str, CdvRules], version: str, status: int) -> None:
    findings = rules[version].check(to_xml(message_for(status)))
    # Every BR-FR-CDV assert is flagged "warning": a message that may be
    # sent has no finding at all, not merely no fatal one.
    assert findings == []


@pytest.mark.parametrize("version", RELEASES)
def test_several_reasons_and_an_amount_with_reasons_pass(rules: dict[str, CdvRules], version: str) -> None:
    disputed = message_for(207, reasons=(Reason("TX_TVA_ERR", "TVA à 10 %"), Reason("QTE_ERR"), Reason("AUTRE")))
    cashed = message_for(212, reasons=(Reason("AUTRE", "Encaissement partiel"),), amount=Decimal("600"))
    assert rules[version].check(to_xml(disputed)) == []
    assert rules[version].check(to_xml(cashed)) == []


def test_phase_follows_the_status() -> None:
    assert message_for(200).phase == PHASE_TRANSMISSION
    assert message_for(501).phase == PHASE_TRANSMISSION
    assert message_for(205).phase == PHASE_PROCESSING
    assert message_for(212).phase == PHASE_PROCESSING


# -- Invalid messages fail with the official rule ----------------------------


@pytest.mark.parametrize("version", RELEASES)
@pytest.mark.parametrize("status", REASON_REQUIRED)
def test_a_missing_required_reason_fails(rules: dict[str, CdvRules], version: str, status: int) -> None:
    findings = rules[version].check(to_xml(message_for(status, reasons=())))
    assert rule_ids(findings) == {"BR-FR-CDV-15_MDT-113"}
    assert findings[0].location.endswith("/ReferenceReferencedDocument[1]/ProcessConditionCode[1]")


@pytest.mark.parametrize("version", RELEASES)
def test_a_reason_of_another_status_fails(rules: dict[str, CdvRules], version: str) -> None:
    findings = rules[version].check(to_xml(message_for(210, reasons=(Reason("IRR_SYNTAX"),))))
    assert rule_ids(findings) == {"BR-FR-CDV-CL-09_MDT-113_210"}


@pytest.mark.parametrize("version", RELEASES)
def test_a_cashed_status_without_amount_fails(rules: dict[str, CdvRules], version: str) -> None:
    findings = rules[version].check(to_xml(message_for(212, amount=None, currency=None)))
    assert rule_ids(findings) == {"BR-FR-CDV-14_MDT-207"}


@pytest.mark.parametrize("version", RELEASES)
def test_an_unknown_status_and_a_missing_invoice_number_fail(rules: dict[str, CdvRules], version: str) -> None:
    unknown = rules[version].check(to_xml(message_for(299)))
    assert rule_ids(unknown) == {"BR-FR-CDV-CL-06_MDT-105"}
    data = without(to_xml(message_for(205)), "//ram:ReferenceReferencedDocument/ram:IssuerAssignedID")
    # The rule's context is the element itself, so its absence goes unseen:
    # parsing (below) is what catches a message without BT-1.
    assert rules[version].check(data) == []


def test_findings_keep_the_flag_of_the_rules(rules: dict[str, CdvRules]) -> None:
    (finding,) = rules["1.3.0"].check(to_xml(message_for(212, amount=None)))
    assert finding.severity == "warning"
    assert finding.message.startswith("[BR-FR-CDV-14/MDT-207]")


def test_a_missing_stylesheet_is_refused_at_once() -> None:
    with pytest.raises(CdvRulesMissing):
        CdvRules(artefacts_dir() / "br-fr" / "0.0.0" / "xslt" / "BR-FR-CDV-CDAR.xslt")


def test_a_shared_instance_serves_several_threads(rules: dict[str, CdvRules]) -> None:
    good, bad = to_xml(message_for(207)), to_xml(message_for(207, reasons=()))
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda i: rule_ids(rules["1.3.0"].check(good if i % 2 else bad)), range(40)))
    assert results == [set() if i % 2 else {"BR-FR-CDV-15_MDT-113"} for i in range(40)]


# -- Round trip ----------------------------------------------------------------


@pytest.mark.parametrize("status", LIFECYCLE_STATUSES)
def test_build_then_parse_gives_the_same_message(status: int) -> None:
    message = message_for(status)
    data = to_xml(message)
    assert from_xml(data) == message
    assert to_xml(message) == data


def test_round_trip_keeps_every_optional_value() -> None:
    message = message_for(
        212,
        reasons=(Reason("AUTRE", "Ligne 1\nLigne 2"), Reason("DOUBLON")),
        status_at=dt.datetime(2026, 3, 1, 23, 0, tzinfo=dt.timezone(dt.timedelta(hours=-2))),
        recipients=(BUYER, Party(role="DFH", global_id="9998", scheme="0238", name="PPF")),
        invoice=dataclasses.replace(INVOICE, type_code=None),
        amount=Decimal("0.50"),
    )
    parsed = from_xml(to_xml(message))
    assert parsed == message
    assert parsed.status_at == dt.datetime(2026, 3, 2, 1, 0, tzinfo=dt.UTC)
    assert str(parsed.amount) == "0.50"


def test_datetimes_are_utc_to_the_second() -> None:
    paris = dt.timezone(dt.timedelta(hours=1))
    message = message_for(205, issued_at=dt.datetime(2026, 3, 2, 10, 30, 15, 999_999, tzinfo=paris))
    assert message.issued_at == ISSUED_AT
    assert message.status_at == ISSUED_AT
    assert b'<udt:DateTimeString format="204">20260302093015</udt:DateTimeString>' in to_xml(message)
    with pytest.raises(ValueError, match="timezone-aware"):
        message_for(205, issued_at=dt.datetime(2026, 3, 2, 9, 30))


def test_a_message_of_another_platform_is_read_leniently() -> None:
    data = to_xml(message_for(212))
    root = etree.fromstring(data)
    (status,) = root.iter(f"{{{RAM}}}SpecifiedDocumentStatus")
    # The amount split by VAT rate, as the PPF asks, in a second block.
    status.addnext(etree.fromstring(etree.tostring(status)))
    for stamp in root.iter(f"{{{UDT}}}DateTimeString"):
        stamp.set("format", "205")
        stamp.text = "20260302113015+0200"
    # The seller named by its SIRET first, then its SIREN.
    (siren,) = root.xpath("//ram:ReferenceReferencedDocument/ram:IssuerTradeParty/ram:GlobalID", namespaces=NSMAP)
    siret = etree.fromstring(etree.tostring(siren))
    siret.set("schemeID", "0009")
    siret.text = "10000000900017"
    siren.addprevious(siret)
    parsed = from_xml(etree.tostring(root))
    assert parsed.amount == Decimal("2400.00")
    assert parsed.issued_at == ISSUED_AT
    assert parsed.invoice.seller_siren == "100000009"


# -- Refused input ---------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<rsm:CrossDomainAcknowledgementAndResponse
  xmlns:rsm="urn:un:unece:uncefact:data:standard:CrossDomainAcknowledgementAndResponse:100">&lol4;
</rsm:CrossDomainAcknowledgementAndResponse>"""

EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE rsm:CrossDomainAcknowledgementAndResponse SYSTEM "http://127.0.0.1:9/cdar.dtd">
<rsm:CrossDomainAcknowledgementAndResponse
  xmlns:rsm="urn:un:unece:uncefact:data:standard:CrossDomainAcknowledgementAndResponse:100"/>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY secret SYSTEM "file:///etc/hostname">]>
<rsm:CrossDomainAcknowledgementAndResponse
  xmlns:rsm="urn:un:unece:uncefact:data:standard:CrossDomainAcknowledgementAndResponse:100">&secret;
</rsm:CrossDomainAcknowledgementAndResponse>"""


def in_encoding(data: bytes, encoding: str) -> bytes:
    declared = data.replace(b'<?xml version="1.0"?>', f'<?xml version="1.0" encoding="{encoding}"?>'.encode())
    return declared.decode().encode(encoding.lower())


def with_xinclude(data: bytes) -> bytes:
    root = etree.fromstring(data)
    (number,) = root.iter(f"{{{RAM}}}IssuerAssignedID")
    include = etree.SubElement(number.getparent(), "{http://www.w3.org/2001/XInclude}include")
    include.set("href", "file:///etc/hostname")
    include.set("parse", "text")
    return bytes(etree.tostring(root))


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(BILLION_LAUGHS, id="entity-expansion"),
        pytest.param(in_encoding(BILLION_LAUGHS, "UTF-16"), id="entity-expansion-utf16"),
        # No byte test sees this DOCTYPE: the check after parsing does.
        pytest.param(in_encoding(EXTERNAL_ENTITY, "UTF-32"), id="external-entity-utf32"),
        pytest.param(EXTERNAL_DTD, id="external-dtd"),
        pytest.param(EXTERNAL_ENTITY, id="external-entity"),
        pytest.param(with_xinclude(to_xml(message_for(205))), id="xinclude"),
    ],
)
def test_hostile_xml_is_refused(rules: dict[str, CdvRules], data: bytes) -> None:
    with pytest.raises(CdarError) as refused:
        from_xml(data)
    assert refused.value.reason_code == "IRR_SYNTAX"
    assert refused.value.field == "document"
    # The validation refuses a DOCTYPE too, before Saxon could see it. (An
    # xi:include is left to the rules: neither lxml nor Saxon processes it.)
    if b"XInclude" not in data:
        with pytest.raises(CdarError):
            rules["1.3.0"].check(data)


def test_oversized_and_empty_input_are_refused() -> None:
    data = to_xml(message_for(205))
    with pytest.raises(CdarError) as too_large:
        from_xml(data, max_bytes=len(data) - 1)
    assert (too_large.value.reason_code, too_large.value.field) == ("IRR_TAILLE_F", "document")
    padded = to_xml(message_for(207, reasons=(Reason("TX_TVA_ERR", "x" * DEFAULT_MAX_BYTES),)))
    with pytest.raises(CdarError, match="larger than"):
        from_xml(padded)
    with pytest.raises(CdarError) as empty:
        from_xml(b"  \n")
    assert empty.value.reason_code == "IRR_VIDE_F"


def test_errors_never_quote_the_input() -> None:
    with pytest.raises(CdarError) as malformed:
        from_xml(b"<rsm:CrossDomainAcknowledgementAndResponse>SECRET-VALUE<unclosed>")
    assert "SECRET" not in str(malformed.value)
    # The lxml error (which quotes the input) is not chained either.
    assert malformed.value.__cause__ is None
    assert malformed.value.__suppress_context__


def test_another_root_is_refused() -> None:
    invoice = b'<rsm:CrossIndustryInvoice xmlns:rsm="urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100"/>'
    with pytest.raises(CdarError) as refused:
        from_xml(invoice)
    assert refused.value.reason_code == "IRR_TYPE_F"
    assert refused.value.field == "CrossDomainAcknowledgementAndResponse"


@pytest.mark.parametrize(
    ("path", "field"),
    [
        (
            "//ram:ReferenceReferencedDocument/ram:IssuerAssignedID",
            "AcknowledgementDocument/ReferenceReferencedDocument/IssuerAssignedID",
        ),
        (
            "//ram:ReferenceReferencedDocument/ram:ProcessConditionCode",
            "AcknowledgementDocument/ReferenceReferencedDocument/ProcessConditionCode",
        ),
        (
            "//ram:ReferenceReferencedDocument/ram:FormattedIssueDateTime",
            "AcknowledgementDocument/ReferenceReferencedDocument/FormattedIssueDateTime",
        ),
        (
            "//ram:ReferenceReferencedDocument/ram:IssuerTradeParty/ram:GlobalID",
            "AcknowledgementDocument/ReferenceReferencedDocument/IssuerTradeParty/GlobalID",
        ),
        ("//rsm:ExchangedDocument/ram:ID", "ExchangedDocument/ID"),
        ("//rsm:ExchangedDocument/ram:SenderTradeParty/ram:RoleCode", "ExchangedDocument/SenderTradeParty/RoleCode"),
        ("//rsm:ExchangedDocument/ram:RecipientTradeParty", "ExchangedDocument/RecipientTradeParty"),
        ("//rsm:AcknowledgementDocument/ram:TypeCode", "AcknowledgementDocument/TypeCode"),
        (
            "//ram:GuidelineSpecifiedDocumentContextParameter",
            "ExchangedDocumentContext/GuidelineSpecifiedDocumentContextParameter",
        ),
    ],
)
def test_a_missing_field_is_named(path: str, field: str) -> None:
    with pytest.raises(CdarError) as refused:
        from_xml(without(to_xml(message_for(207)), path))
    assert (refused.value.reason_code, refused.value.field) == ("IRR_SYNTAX", field)
    assert str(refused.value) == f"{field}: is missing"


REFERENCE = "AcknowledgementDocument/ReferenceReferencedDocument"


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        (b">207<", b">2O7<", f"{REFERENCE}/ProcessConditionCode"),
        (b">20260301<", b">20260231<", f"{REFERENCE}/FormattedIssueDateTime/DateTimeString"),
        (b'format="102"', b'format="999"', f"{REFERENCE}/FormattedIssueDateTime/DateTimeString"),
        (b">F2026-0001<", b">  <", f"{REFERENCE}/IssuerAssignedID"),
        (b">1200.00<", b">1e9<", f"{REFERENCE}/SpecifiedDocumentStatus/SpecifiedDocumentCharacteristic/ValueAmount"),
    ],
)
def test_a_malformed_field_is_named(old: bytes, new: bytes, field: str) -> None:
    data = to_xml(message_for(212 if b"1200" in old else 207))
    assert old in data
    with pytest.raises(CdarError) as refused:
        from_xml(data.replace(old, new))
    assert (refused.value.reason_code, refused.value.field) == ("IRR_SYNTAX", field)
    assert new.strip(b"<>").decode() not in refused.value.message


def test_a_second_invoice_is_refused() -> None:
    root = etree.fromstring(to_xml(message_for(205)))
    (document,) = root.iter(f"{{{RAM}}}ReferenceReferencedDocument")
    document.addnext(etree.fromstring(etree.tostring(document)))
    with pytest.raises(CdarError) as refused:
        from_xml(etree.tostring(root))
    assert refused.value.field == "AcknowledgementDocument/ReferenceReferencedDocument"
