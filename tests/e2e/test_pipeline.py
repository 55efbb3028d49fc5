"""An invoice's journey through ingest -> validate -> route -> status on the
real stack (Kafka, PostgreSQL, the four services)."""

from __future__ import annotations

import uuid

import pytest
from invoicing.v1 import events_pb2

from invoicing_common import topics
from tests.support import Stack, collect_until_final, get_invoice, records_for_key, submit, unique_invoice

pytestmark = pytest.mark.stack


async def test_valid_ubl_valid_cii_and_non_xml_reach_their_final_status(stack: Stack, status_follower: object) -> None:
    ubl, ubl_number = unique_invoice("ubl-invoice-valid.xml")
    cii, cii_number = unique_invoice("cii-invoice-valid.xml")
    ubl_id = (await submit(stack.ingest, ubl, "invoice.xml")).invoice_id
    cii_id = (await submit(stack.ingest, cii, "invoice-cii.xml")).invoice_id
    # Unique bytes: the demo account outlives the test run, and the same
    # bytes from the same account are a retry of the first submission.
    junk = b"%PDF-not really\x00\x01 " + uuid.uuid4().hex.encode()
    junk_id = (await submit(stack.ingest, junk, "junk.bin")).invoice_id

    events = await collect_until_final(status_follower, {ubl_id, cii_id, junk_id})  # type: ignore[arg-type]

    expected_local = 203 if stack.platform_id == "local" else 201
    assert [e.status_code for e in events[ubl_id]] == [200, expected_local]
    assert [e.status_code for e in events[cii_id]] == [200, expected_local]
    # Not an invoice the platform can open: inadmissible, not rejected.
    assert [e.status_code for e in events[junk_id]] == [200, 501]
    refusal = events[junk_id][-1]
    assert refusal.status == "INADMISSIBLE" and refusal.status_label_fr == "Irrecevable"
    assert refusal.previous_status_code == 200
    assert refusal.reason.code == "IRR_SYNTAX"
    assert events[ubl_id][-1].invoice_number == ubl_number
    assert events[cii_id][-1].invoice_number == cii_number

    for invoice_id, final in ((ubl_id, expected_local), (cii_id, expected_local), (junk_id, 501)):
        reply = await get_invoice(stack.status, invoice_id)
        assert reply.status_code == final
        assert [h.status_code for h in reply.history] == [200, final]
        assert all(h.HasField("at") for h in reply.history)
    refused = await get_invoice(stack.status, junk_id)
    assert refused.reason.code == "IRR_SYNTAX"
    assert refused.history[-1].reason.code == "IRR_SYNTAX"
    assert refused.findings and refused.findings[0].rule in {"FORMAT", "PARSE"}


async def test_status_events_are_keyed_by_invoice_id(stack: Stack, status_follower: object) -> None:
    doc, _ = unique_invoice("ubl-invoice-valid.xml")
    invoice_id = (await submit(stack.ingest, doc, "keyed.xml")).invoice_id
    await collect_until_final(status_follower, {invoice_id})  # type: ignore[arg-type]

    records = await records_for_key(stack.kafka, topics.STATUS, invoice_id)
    assert len({r.partition for r in records}) == 1, "one invoice's events must share a partition"
    decoded = [events_pb2.StatusEvent.FromString(r.value) for r in records]
    assert [e.status_code for e in decoded] == [200, 203 if stack.platform_id == "local" else 201]
    assert [e.sequence for e in decoded] == sorted(e.sequence for e in decoded)


async def test_a_5_mib_document_goes_through_end_to_end(stack: Stack, status_follower: object) -> None:
    doc, _ = unique_invoice("ubl-invoice-valid.xml")
    # Pad with an XML comment: the document stays a valid invoice.
    padding = b"<!--" + b"x" * (5 * 1024 * 1024) + b"-->"
    big = doc.replace(b"?>", b"?>" + padding, 1)
    assert len(big) > 5 * 1024 * 1024
    reply = await submit(stack.ingest, big, "big.xml")

    events = await collect_until_final(status_follower, {reply.invoice_id}, timeout=120)  # type: ignore[arg-type]
    assert [e.status_code for e in events[reply.invoice_id]] == [200, 203 if stack.platform_id == "local" else 201]


async def test_bad_requests_are_refused_with_the_field_named(stack: Stack) -> None:
    import grpc

    with pytest.raises(grpc.aio.AioRpcError) as empty:
        await submit(stack.ingest, b"", "empty.xml")
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "document" in (empty.value.details() or "")

    doc, _ = unique_invoice("ubl-invoice-valid.xml")
    with pytest.raises(grpc.aio.AioRpcError) as long_key:
        await submit(stack.ingest, doc, "x.xml", key="k" * 500)
    assert long_key.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "idempotency_key" in (long_key.value.details() or "")

    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await get_invoice(stack.status, "00000000-0000-0000-0000-000000000000")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

    with pytest.raises(grpc.aio.AioRpcError) as malformed:
        await get_invoice(stack.status, "not-a-uuid")
    assert malformed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "invoice_id" in (malformed.value.details() or "")
