"""Payment follow-up: the supplier and the buyer follow an invoice until it
is paid. 211 PAYMENT_SENT and 212 CASHED carry the amount and date paid
(history, status topic); the invoice keeps its due date (BT-9); ListInvoices
and `invoicectl list` filter on "due before" and "unpaid"."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from invoicing.v1 import events_pb2, status_pb2, status_pb2_grpc

from tests.e2e.test_access import caller_of, cli_account, invoicectl
from tests.integration.test_directory_api import fresh_siren
from tests.support import (
    SAMPLE_BUYER,
    Caller,
    Stack,
    collect_until_final,
    demo_channel,
    get_invoice,
    invoice_from,
    new_account,
    submit,
)

pytestmark = pytest.mark.stack

DUE = "2025-04-13"  # BT-9 of the sample invoice


async def _listed(caller: Caller, address: str, flt: status_pb2.InvoiceFilter) -> dict[str, str]:
    """invoice id -> due date, of what ListInvoices shows ``caller``."""
    async with caller.channel(address) as channel:
        reply = await status_pb2_grpc.StatusServiceStub(channel).ListInvoices(
            status_pb2.ListInvoicesRequest(filter=flt, page_size=500), timeout=30
        )
    return {i.invoice_id: i.due_date for i in reply.invoices}


async def _event(follower: Any, invoice_id: str, code: int) -> events_pb2.StatusEvent:
    async def find() -> events_pb2.StatusEvent:
        async for event in follower.events():
            if event.invoice_id == invoice_id and event.status_code == code:
                return event  # type: ignore[no-any-return]
        raise AssertionError("the follower stopped")

    return await asyncio.wait_for(find(), 60)


async def test_an_invoice_is_followed_until_it_is_paid(stack: Stack, status_follower: Any) -> None:
    since = datetime.now(UTC)
    today = since.date().isoformat()
    siren = fresh_siren()
    account = cli_account("--role", "supplier", "--siren", siren)
    try:
        supplier = caller_of(account)
        buyer = new_account(roles=("buyer",), sirens=(SAMPLE_BUYER,))
        doc, _ = invoice_from(siren)
        invoice_id = (await submit(stack.ingest, doc, "to-be-paid.xml", metadata=supplier.metadata())).invoice_id
        events = await collect_until_final(status_follower, {invoice_id})
        assert events[invoice_id][-1].status_code == 203
        assert (await get_invoice(stack.status, invoice_id, supplier)).summary.due_date == DUE

        def owed(due_before: str) -> status_pb2.InvoiceFilter:
            flt = status_pb2.InvoiceFilter(unpaid=True, due_before=due_before)
            flt.received_from.FromDatetime(since)
            return flt

        assert (await _listed(supplier, stack.status, owed("2025-04-14")))[invoice_id] == DUE
        assert invoice_id not in await _listed(supplier, stack.status, owed(DUE))  # due on, not before

        async def update(caller: Caller, code: int, amount: str = "", paid_on: str = "", currency: str = "") -> Any:
            request = status_pb2.UpdateStatusRequest(invoice_id=invoice_id, status_code=code)
            request.payment.amount, request.payment.paid_on, request.payment.currency = amount, paid_on, currency
            async with caller.channel(stack.status) as channel:
                return await status_pb2_grpc.StatusServiceStub(channel).UpdateStatus(request, timeout=30)

        async def refused(caller: Caller, code: int, **payment: str) -> str:
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await update(caller, code, **payment)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value.details()
            return error.value.details() or ""

        assert (await refused(buyer, 211)).startswith("payment: status 211 PAYMENT_SENT requires a payment")
        assert (await refused(buyer, 211, amount="828.001", paid_on=today)).startswith("payment.amount:")
        assert (await refused(buyer, 211, amount="828", paid_on="2999-01-01")).startswith("payment.paid_on:")
        assert (await refused(buyer, 211, amount="828", paid_on=today, currency="euro")).startswith("payment.currency:")
        assert (await refused(buyer, 204, amount="828", paid_on=today)).startswith("payment: a payment goes with")
        sent = await update(buyer, 211, amount="828", paid_on=today)
        assert sent.applied and sent.status_code == 211

        # On the status topic, and in the history, with the invoice's currency.
        event = await _event(status_follower, invoice_id, 211)
        assert (event.payment.amount, event.payment.currency, event.payment.paid_on) == ("828.00", "EUR", today)
        history = (await get_invoice(stack.status, invoice_id, supplier)).history
        assert history[-1].payment == event.payment
        # Sent is not received: still owed.
        assert invoice_id in await _listed(supplier, stack.status, owed("2025-04-14"))

        # The supplier records the cash through the CLI; then it is paid.
        done = invoicectl(
            "update", invoice_id, "--status", "212", "--amount", "828.00", "--paid-on", today, "--json",
            account=account,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["status_code"] == 212
        assert invoice_id not in await _listed(supplier, stack.status, owed("2025-04-14"))
        listed = invoicectl(
            "list", "--unpaid", "--due-before", "2025-04-14", "--since", since.isoformat(), "--json", account=account
        )
        assert listed.returncode == 0, listed.stderr
        assert invoice_id not in listed.stdout
        shown = json.loads(invoicectl("status", invoice_id, "--json", account=account).stdout)
        assert shown["due_date"] == DUE
        assert [h["payment"] for h in shown["history"][-2:]] == [
            {"amount": "828.00", "currency": "EUR", "paid_on": today},
            {"amount": "828.00", "currency": "EUR", "paid_on": today},
        ]
    finally:
        invoicectl("accounts", "delete", account["client_id"])


async def test_payment_filters_are_for_lists_and_dates_are_checked(stack: Stack) -> None:
    async with demo_channel(stack.status) as channel:
        stub = status_pb2_grpc.StatusServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as watch:
            call = stub.WatchInvoices(status_pb2.WatchInvoicesRequest(filter=status_pb2.InvoiceFilter(unpaid=True)))
            await call.read()
        assert watch.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (watch.value.details() or "").startswith("filter.unpaid:")
        with pytest.raises(grpc.aio.AioRpcError) as bad_date:
            await stub.ListInvoices(
                status_pb2.ListInvoicesRequest(filter=status_pb2.InvoiceFilter(due_before="13/04/2025")), timeout=30
            )
        assert bad_date.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (bad_date.value.details() or "").startswith("filter.due_before:")
