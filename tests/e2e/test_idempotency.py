"""Retries: the same idempotency key or the same bytes give the first
receipt back and start no second journey."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from invoicing.v1 import ingest_pb2, ingest_pb2_grpc

from invoicing_common import topics
from tests.support import (
    Stack,
    anonymous_channel,
    collect_until_final,
    get_invoice,
    records_for_key,
    submit,
    submitter,
    unique_invoice,
)

pytestmark = pytest.mark.stack


async def test_same_idempotency_key_returns_same_invoice_and_no_second_journey(
    stack: Stack, status_follower: object
) -> None:
    who = submitter()
    doc, _ = unique_invoice("ubl-invoice-valid.xml")
    first = await submit(stack.ingest, doc, "retry.xml", key="erp-42", metadata=who)
    assert not first.duplicate
    await collect_until_final(status_follower, {first.invoice_id})  # type: ignore[arg-type]

    again = await submit(stack.ingest, doc, "retry.xml", key="erp-42", metadata=who)

    assert again.duplicate
    assert again.invoice_id == first.invoice_id
    assert again.received_at == first.received_at
    # Ingest answers only after its record is in Kafka, so the topic read to
    # its current end holds every record this retry could have produced.
    received = await records_for_key(stack.kafka, topics.RECEIVED, first.invoice_id)
    assert len(received) == 1
    reply = await get_invoice(stack.status, first.invoice_id)
    assert [h.status_code for h in reply.history] == [200, 203 if stack.platform_id == "local" else 201]
    statuses = await records_for_key(stack.kafka, topics.STATUS, first.invoice_id)
    assert len(statuses) == 2


async def test_same_bytes_from_same_submitter_is_a_retry_without_key(stack: Stack) -> None:
    who = submitter()
    doc, _ = unique_invoice("cii-invoice-valid.xml")
    first = await submit(stack.ingest, doc, "a.xml", metadata=who)
    second = await submit(stack.ingest, doc, "a.xml", metadata=who)
    assert second.duplicate and second.invoice_id == first.invoice_id
    other = await submit(stack.ingest, doc, "a.xml", metadata=submitter())
    assert not other.duplicate and other.invoice_id != first.invoice_id


async def test_key_reused_for_another_document_is_refused(stack: Stack) -> None:
    who = submitter()
    one, _ = unique_invoice("ubl-invoice-valid.xml")
    two, _ = unique_invoice("ubl-invoice-valid.xml")
    first = await submit(stack.ingest, one, "one.xml", key="k-1", metadata=who)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await submit(stack.ingest, two, "two.xml", key="k-1", metadata=who)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = refused.value.details() or ""
    assert "idempotency_key" in details and first.invoice_id in details


async def test_batch_stream_answers_in_order_and_reports_bad_documents_in_place(
    stack: Stack, status_follower: object
) -> None:
    docs = [unique_invoice("ubl-invoice-valid.xml")[0], b"", unique_invoice("cii-invoice-valid.xml")[0]]

    async def requests() -> AsyncIterator[ingest_pb2.SubmitInvoiceRequest]:
        for i, doc in enumerate(docs):
            yield ingest_pb2.SubmitInvoiceRequest(document=doc, filename=f"batch-{i}.xml")

    async with anonymous_channel(stack.ingest) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        replies = [r async for r in stub.SubmitInvoices(requests(), metadata=submitter(), timeout=60)]

    assert len(replies) == 3
    assert replies[0].invoice_id and not replies[0].HasField("error")
    assert replies[1].error.code == "INVALID_ARGUMENT" and replies[1].error.field == "document"
    assert replies[2].invoice_id and not replies[2].HasField("error")
    await collect_until_final(status_follower, {replies[0].invoice_id, replies[2].invoice_id})  # type: ignore[arg-type]
