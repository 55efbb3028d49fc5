"""A document the platform cannot process at all ends 501 INADMISSIBLE with
an official IRR_* reason; one the rules refuse ends 213 REJECTED. The
engine runs on each case, so that a reworded finding cannot move a document
from one to the other unnoticed (admissibility.py reads the messages)."""

from __future__ import annotations

import io
from dataclasses import dataclass

import pytest
from invoicing.v1 import events_pb2

from invoicing_validate.admissibility import (
    EMPTY_FILE,
    FILE_SIZE,
    FILE_TYPE,
    SYNTAX,
    inadmissibility,
    inadmissible_code,
)
from invoicing_validate.domain import REJECTION_CODE, validated_event
from invoicing_validate.validation import Validator
from invoicing_validate.validation.parsing import MAX_XML_BYTES
from tests.support import SAMPLES
from tests.validators import make_validator

RECEIVED = events_pb2.InvoiceReceived(
    event_id="rcv", invoice=events_pb2.InvoiceRef(invoice_id="inv"), submitter_sirens=["842109373"]
)


@pytest.fixture(scope="module")
def validator() -> Validator:
    return make_validator()


def _blank_pdf() -> bytes:
    from pypdf import PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(595, 842)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


@pytest.mark.parametrize(
    ("document", "code"),
    [
        pytest.param(b"", EMPTY_FILE, id="empty"),
        pytest.param((SAMPLES / "not-an-invoice.txt").read_bytes(), FILE_TYPE, id="plain-text"),
        pytest.param(b'<Order xmlns="urn:example:order"/>', FILE_TYPE, id="unknown-root"),
        pytest.param(b"<Invoice><ID>1</Invoice>", SYNTAX, id="not-well-formed"),
        pytest.param(b'<!DOCTYPE Invoice [<!ENTITY x "y">]><Invoice/>', SYNTAX, id="doctype"),
        pytest.param(b"%PDF-not really\x00\x01 junk", SYNTAX, id="unreadable-pdf"),
        pytest.param(_blank_pdf(), FILE_TYPE, id="pdf-without-invoice"),
        pytest.param(b"<Invoice>" + b" " * MAX_XML_BYTES + b"</Invoice>", FILE_SIZE, id="too-large"),
    ],
)
def test_a_document_that_cannot_be_processed_is_inadmissible(validator: Validator, document: bytes, code: str) -> None:
    report = validator.validate(document, "doc")
    event = validated_event(RECEIVED, report)
    assert not event.valid and event.inadmissible
    assert event.reason.code == code, [(f.rule, f.message) for f in report.findings]
    assert event.reason.text.startswith(report.findings[0].rule + ": ")
    # Nothing was read: no seller to check, no finding added about one.
    assert [f.rule for f in event.findings] == [f.rule for f in report.findings]


def test_a_document_the_rules_refuse_is_rejected_not_inadmissible(validator: Validator) -> None:
    report = validator.validate((SAMPLES / "ubl-invoice-invalid-rules.xml").read_bytes(), "bad.xml")
    event = validated_event(RECEIVED, report)
    assert not event.valid and not event.inadmissible
    assert event.reason.code == REJECTION_CODE


def test_a_valid_document_is_neither(validator: Validator) -> None:
    event = validated_event(RECEIVED, validator.validate((SAMPLES / "ubl-invoice-valid.xml").read_bytes(), "ok.xml"))
    assert event.valid and not event.inadmissible and not event.reason.code


@dataclass(frozen=True)
class F:
    rule: str
    message: str
    severity: str = "fatal"


def test_a_verdict_of_the_rules_beside_a_technical_finding_makes_it_a_rejection() -> None:
    assert inadmissibility([F("PARSE", "embedded XML is not well-formed XML: x"), F("BR-01", "no number")]) is None
    assert inadmissibility([F("XSD", "element x not expected")]) is None
    assert inadmissibility([]) is None


def test_warnings_do_not_count() -> None:
    found = inadmissibility([F("BR-FR-01", "w", severity="warning"), F("FORMAT", "empty document")])
    assert found is not None and found[0] == EMPTY_FILE


@pytest.mark.parametrize("rule", ["VALIDATION-CRASH", "VALIDATION-TIME-LIMIT", "INTERNAL", "SCHEMATRON"])
def test_a_platform_failure_is_inadmissible_as_unprocessable_content(rule: str) -> None:
    assert inadmissible_code(F(rule, "anything")) == SYNTAX


def test_an_empty_marker_counts_only_at_the_start() -> None:
    assert inadmissible_code(F("PARSE", "document is not well-formed XML: Document is empty ")) == SYNTAX
