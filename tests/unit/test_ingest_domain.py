from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from invoicing_ingest.domain import SubmissionError, check_submission, new_receipt, received_event


def test_accepts_a_document_and_fingerprints_it() -> None:
    sub = check_submission(b"<Invoice/>", "a.xml", "", "account-1", 100, frozenset({"842109373"}))
    assert sub.sha256 == hashlib.sha256(b"<Invoice/>").hexdigest()
    assert sub.idempotency_key is None
    assert sub.submitter == "account-1" and sub.submitter_sirens == {"842109373"}


def test_there_is_no_anonymous_submitter() -> None:
    # Receipts and keys are scoped per account: an empty one would be a
    # scope shared by every caller that lacked one.
    with pytest.raises(ValueError, match="authenticated submitter"):
        check_submission(b"<Invoice/>", "a.xml", "", "", 100)


@pytest.mark.parametrize(
    ("document", "filename", "key", "field"),
    [
        (b"", "a.xml", "", "document"),
        (b"x" * 101, "a.xml", "", "document"),
        (b"<a/>", "f" * 256, "", "filename"),
        (b"<a/>", "a\nb.xml", "", "filename"),
        (b"<a/>", "a.xml", "k" * 129, "idempotency_key"),
        (b"<a/>", "a.xml", "bad\x07key", "idempotency_key"),
    ],
)
def test_refuses_bad_requests_naming_the_field(document: bytes, filename: str, key: str, field: str) -> None:
    with pytest.raises(SubmissionError) as refused:
        check_submission(document, filename, key, "erp", 100)
    assert refused.value.field == field
    assert field.split("_")[0] in refused.value.message


def test_received_event_carries_what_later_stages_need() -> None:
    sub = check_submission(b"<Invoice/>", "a.xml", "k1", "erp", 100, frozenset({"842109373", "512345679"}))
    receipt = new_receipt(datetime(2026, 1, 1, tzinfo=UTC))
    event = received_event(sub, receipt, trace_id="ab" * 16)
    assert event.event_id == receipt.event_id == event.invoice.received_event_id
    assert event.invoice.invoice_id == receipt.invoice_id
    # The claim check: a reference to the archived document, not its bytes.
    assert not event.document and event.idempotency_key == "k1"
    assert (event.original.sha256, event.original.size_bytes) == (hashlib.sha256(b"<Invoice/>").hexdigest(), 10)
    assert (event.original.media_type, event.original.filename) == ("application/xml", "a.xml")
    assert event.invoice.submitter == "erp" and event.invoice.trace_id == "ab" * 16
    assert list(event.submitter_sirens) == ["512345679", "842109373"]


def test_event_ids_are_stable_per_invoice_and_stage() -> None:
    from invoicing_common.ids import stage_event_id

    assert stage_event_id("inv", "validated") == stage_event_id("inv", "validated")
    assert stage_event_id("inv", "validated") != stage_event_id("inv", "routed")
