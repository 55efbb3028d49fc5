"""The status service's lifecycle API on the real stack: business
duplicates, UpdateStatus, ListInvoices paging and WatchInvoices resume."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import grpc
import pytest
from invoicing.v1 import status_pb2, status_pb2_grpc

from tests.support import (
    Stack,
    collect_until_final,
    demo,
    demo_channel,
    get_invoice,
    submit,
    submitter,
    unique_invoice,
)

pytestmark = pytest.mark.stack


def _stub(channel: grpc.aio.Channel) -> status_pb2_grpc.StatusServiceStub:
    return status_pb2_grpc.StatusServiceStub(channel)


async def _made_available(stack: Stack, follower: object, count: int = 1) -> list[str]:
    ids = []
    for _ in range(count):
        doc, _ = unique_invoice("ubl-invoice-valid.xml")
        ids.append((await submit(stack.ingest, doc, "lifecycle.xml")).invoice_id)
    events = await collect_until_final(follower, set(ids))  # type: ignore[arg-type]
    assert all(events[i][-1].status_code in (201, 203) for i in ids), events
    return ids


async def test_second_invoice_with_same_number_seller_year_and_type_is_rej_uni(
    stack: Stack, status_follower: object
) -> None:
    first_doc, number = unique_invoice("ubl-invoice-valid.xml")
    second_doc, _ = unique_invoice("ubl-invoice-valid.xml", number=number)
    assert first_doc != second_doc
    first = await submit(stack.ingest, first_doc, "first.xml", metadata=submitter())
    await collect_until_final(status_follower, {first.invoice_id})  # type: ignore[arg-type]
    second = await submit(stack.ingest, second_doc, "second.xml", metadata=submitter())
    events = await collect_until_final(status_follower, {second.invoice_id})  # type: ignore[arg-type]

    assert not second.duplicate and second.invoice_id != first.invoice_id
    final = events[second.invoice_id][-1]
    assert final.status_code == 213
    assert final.reason.code == "REJ_UNI"
    # The reason does not name the first invoice: the second one's buyer
    # need not be the first one's.
    assert "duplicate" in final.reason.text and first.invoice_id not in final.reason.text
    assert (await get_invoice(stack.status, first.invoice_id)).status_code in (201, 203)
    # A CII invoice with another number from the same seller is not affected.
    other, _ = unique_invoice("cii-invoice-valid.xml")
    third = await submit(stack.ingest, other, "third.xml")
    events = await collect_until_final(status_follower, {third.invoice_id})  # type: ignore[arg-type]
    assert events[third.invoice_id][-1].status_code in (201, 203)


async def test_update_status_follows_the_lifecycle_and_names_what_is_allowed(
    stack: Stack, status_follower: object
) -> None:
    # The demo account acts for the samples' seller and buyer, with both
    # roles: it may play either part (tests/e2e/test_access.py covers
    # accounts that may not).
    (invoice_id,) = await _made_available(stack, status_follower)
    async with demo_channel(stack.status) as channel:
        stub = _stub(channel)

        async def update(
            code: int, reason: tuple[str, str] | None = None, request_id: str = "", paid: bool = False
        ) -> status_pb2.UpdateStatusResponse:
            request = status_pb2.UpdateStatusRequest(invoice_id=invoice_id, status_code=code, request_id=request_id)
            if reason:
                request.reason.code, request.reason.text = reason
            if paid:  # 211 and 212 carry the payment
                request.payment.amount, request.payment.paid_on = "828.00", datetime.now(UTC).date().isoformat()
            reply: status_pb2.UpdateStatusResponse = await stub.UpdateStatus(request, timeout=30)
            return reply

        with pytest.raises(grpc.aio.AioRpcError) as skipped:
            await update(212)
        assert skipped.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        details = skipped.value.details() or ""
        assert "203 MADE_AVAILABLE" in details and "204 IN_HAND" in details and "211 PAYMENT_SENT" in details

        taken = await update(204, request_id="take-1")
        assert taken.applied and taken.status_code == 204
        again = await update(204, request_id="take-1")
        assert not again.applied and again.status_code == 204 and again.position == taken.position

        with pytest.raises(grpc.aio.AioRpcError) as no_reason:
            await update(208)
        assert no_reason.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "reason" in (no_reason.value.details() or "") and "208" in (no_reason.value.details() or "")

        with pytest.raises(grpc.aio.AioRpcError) as platform_status:
            await update(213, ("REJ_SEMAN", "no"))
        assert platform_status.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "status_code" in (platform_status.value.details() or "")

        with pytest.raises(grpc.aio.AioRpcError) as unofficial:
            await update(208, ("MISSING_PO", "purchase order number missing"))
        assert unofficial.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "reason.code" in (unofficial.value.details() or "") and "CMD_ERR" in (unofficial.value.details() or "")

        with pytest.raises(grpc.aio.AioRpcError) as inadmissible:
            await update(501, ("IRR_SYNTAX", "no"))
        assert inadmissible.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        await update(208, ("CMD_ERR", "purchase order number missing"))
        await update(209)
        await update(205)
        await update(211, paid=True)
        paid = await update(212, paid=True)
        assert paid.status_code == 212
        with pytest.raises(grpc.aio.AioRpcError) as final:
            await update(204)
        assert final.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "none (final status)" in (final.value.details() or "")

    reply = await get_invoice(stack.status, invoice_id)
    assert [h.status_code for h in reply.history][-7:] == [203, 204, 208, 209, 205, 211, 212]
    # The history names the authenticated account and the part it played.
    subject = demo().subject()
    by = {h.status_code: h.actor for h in reply.history}
    assert by[208] == f"buyer:{subject}" and by[209] == f"supplier:{subject}" and by[212] == f"supplier:{subject}"
    suspended = next(h for h in reply.history if h.status_code == 208)
    assert suspended.reason.code == "CMD_ERR"


async def test_list_pages_are_stable_and_complete(stack: Stack, status_follower: object) -> None:
    since = datetime.now(UTC)
    ids = await _made_available(stack, status_follower, count=7)
    flt = status_pb2.InvoiceFilter()
    flt.received_from.FromDatetime(since)
    seen: list[str] = []
    async with demo_channel(stack.status) as channel:
        stub = _stub(channel)
        token = ""
        pages = 0
        while True:
            reply = await stub.ListInvoices(
                status_pb2.ListInvoicesRequest(filter=flt, page_size=3, page_token=token), timeout=30
            )
            seen += [i.invoice_id for i in reply.invoices]
            pages += 1
            token = reply.next_page_token
            if not token:
                break
        assert pages == 3
        assert sorted(seen) == sorted(ids) and len(set(seen)) == len(seen)
        assert seen == list(reversed(ids))  # newest first, submitted one after the other

        other = status_pb2.InvoiceFilter(status_codes=[213])
        first = await stub.ListInvoices(status_pb2.ListInvoicesRequest(filter=flt, page_size=3), timeout=30)
        with pytest.raises(grpc.aio.AioRpcError) as mismatch:
            await stub.ListInvoices(
                status_pb2.ListInvoicesRequest(filter=other, page_size=3, page_token=first.next_page_token), timeout=30
            )
        assert mismatch.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "page_token" in (mismatch.value.details() or "")


async def test_watch_resumes_after_the_last_position(stack: Stack, status_follower: object) -> None:
    since = datetime.now(UTC)
    ids = await _made_available(stack, status_follower, count=2)
    flt = status_pb2.InvoiceFilter()
    flt.received_from.FromDatetime(since)
    async with demo_channel(stack.status) as channel:
        stub = _stub(channel)

        async def take(from_position: int, n: int) -> list[status_pb2.WatchInvoicesResponse]:
            got = []
            call = stub.WatchInvoices(status_pb2.WatchInvoicesRequest(filter=flt, from_position=from_position))
            async for reply in call:
                got.append(reply)
                if len(got) == n:
                    call.cancel()
                    break
            return got

        everything = await asyncio.wait_for(take(1, 4), 30)
        head = await asyncio.wait_for(take(1, 2), 30)
        rest = await asyncio.wait_for(take(head[-1].position, 2), 30)

    assert [r.position for r in head + rest] == [r.position for r in everything]
    assert sorted({r.event.invoice_id for r in everything}) == sorted(ids)
    assert [r.event.status_code for r in everything if r.event.invoice_id == ids[0]] == [200, 203]
    positions = [r.position for r in everything]
    assert positions == sorted(positions) and len(set(positions)) == 4
    assert all(r.event.chorus_pro_status for r in everything)
