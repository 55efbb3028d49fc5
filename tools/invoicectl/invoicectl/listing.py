"""ListInvoices, following its page tokens (`list` and `inbox`)."""

from __future__ import annotations

from invoicing.v1 import status_pb2, status_pb2_grpc

from invoicectl.config import channel


async def fetch_list(
    address: str, f: status_pb2.InvoiceFilter, limit: int, page_size: int
) -> list[status_pb2.InvoiceListItem]:
    """Up to ``limit`` invoices (0: all), newest first."""
    items: list[status_pb2.InvoiceListItem] = []
    token = ""
    async with channel(address) as status_channel:
        stub = status_pb2_grpc.StatusServiceStub(status_channel)
        while True:
            size = min(page_size, limit - len(items)) if limit else page_size
            reply = await stub.ListInvoices(
                status_pb2.ListInvoicesRequest(filter=f, page_size=size, page_token=token), timeout=30
            )
            items.extend(reply.invoices)
            token = reply.next_page_token
            if not token or (limit and len(items) >= limit):
                return items
