"""Two approved platforms, end to end (the four-corner model): a seller on
platform A (`local`) invoices a buyer on platform B (`peer`). A routes the
invoice to B (201), its delivery stage sends it to B's ingest as A's
platform account, and A records 202 when B acknowledges. B validates and
routes it to its buyer (203). The buyer's statuses travel back to A as
CDAR messages, and the supplier's 212 CASHED, set on A, travels to B: both
end 212 with the same history, each status once, and every CDAR message on
the wire passes the official BR-FR-CDV rules.

Then B's ingest is stopped while A delivers another invoice: A keeps
trying, and once B is back the invoice is delivered once (202), with no
duplicate on B.

Both platforms share the stack's Kafka, PostgreSQL and identity provider
(separate topics, databases and ports): the module starts platform B's
services with PLATFORMS=2 and stops them at the end."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from invoicing.v1 import directory_pb2, directory_pb2_grpc, status_pb2, status_pb2_grpc

from invoicing_common.cdar import CdvRules
from invoicing_common.rules import load_book
from tests.e2e.test_routing import invoice_for
from tests.integration.test_directory_api import fresh_siren, siret_of
from tests.support import (
    SAMPLE_SELLER,
    Caller,
    Stack,
    demo_channel,
    get_invoice,
    new_account,
    run_stack,
    submit,
)

pytestmark = pytest.mark.stack

PEER = "peer"
PEER_PARTS = ("peer-ingest", "peer-validate", "peer-route", "peer-status")
TIMEOUT = 120.0


@dataclass(frozen=True)
class Peer:
    ingest: str
    status: str
    route: str
    database_url: str


async def _stack(*args: str, env: dict[str, str]) -> None:
    await asyncio.get_running_loop().run_in_executor(None, lambda: run_stack(*args, env=env))


def _env(**changes: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PLATFORMS"}
    return env | changes


@pytest.fixture(scope="module")
def peer(stack: Stack) -> Iterator[Peer]:
    """Platform B beside the stack's A; A's services restarted so that they
    know B (PLATFORMS_FILE), and again without it at the end."""
    two = _env(PLATFORMS="2")
    try:
        run_stack("restart-services", env=two)
        yield Peer(
            ingest=os.environ.get("PEER_INGEST_ADDR", "127.0.0.1:17011"),
            status=os.environ.get("PEER_STATUS_ADDR", "127.0.0.1:17014"),
            route=os.environ.get("PEER_ROUTE_ADDR", "127.0.0.1:17013"),
            database_url=_peer_database_url(stack),
        )
    finally:
        run_stack("stop", *PEER_PARTS, env=two)
        run_stack("restart-services", env=_env())


def _peer_database_url(stack: Stack) -> str:
    configured = os.environ.get("PEER_DATABASE_URL")
    if configured:
        return configured
    base, _, _ = stack.database_url.rpartition("/")
    return f"{base}/invoicing_peer"


async def _until(what: str, probe: Callable[[], Awaitable[Any]], timeout: float = TIMEOUT) -> Any:
    """Poll ``probe`` until it returns something truthy (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        found = await probe()
        if found:
            return found
        assert time.monotonic() < deadline, f"not within {timeout:g}s: {what}"
        await asyncio.sleep(0.25)  # polling another platform's state, bounded by the deadline


def _codes(view: status_pb2.GetInvoiceResponse) -> list[int]:
    return [h.status_code for h in view.history]


async def _reaches(address: str, invoice_id: str, caller: Caller, code: int) -> status_pb2.GetInvoiceResponse:
    async def probe() -> status_pb2.GetInvoiceResponse | None:
        try:
            view = await get_invoice(address, invoice_id, caller)
        except grpc.aio.AioRpcError as exc:
            # Acknowledged by ingest, not yet recorded by status.
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return view if code in _codes(view) else None

    found: status_pb2.GetInvoiceResponse = await _until(f"{invoice_id} reaches {code} at {address}", probe)
    return found


async def _on_peer(peer: Peer, buyer: Caller, number: str, since: datetime) -> list[status_pb2.InvoiceListItem]:
    flt = status_pb2.InvoiceFilter()
    flt.received_from.FromDatetime(since)
    async with buyer.channel(peer.status) as channel:
        reply = await status_pb2_grpc.StatusServiceStub(channel).ListInvoices(
            status_pb2.ListInvoicesRequest(filter=flt, page_size=500), timeout=30
        )
    return [item for item in reply.invoices if item.invoice_number == number]


async def _update(address: str, caller: Caller, invoice_id: str, code: int, **payment: str) -> None:
    request = status_pb2.UpdateStatusRequest(invoice_id=invoice_id, status_code=code)
    for name, value in payment.items():
        setattr(request.payment, name, value)
    async with caller.channel(address) as channel:
        await status_pb2_grpc.StatusServiceStub(channel).UpdateStatus(request, timeout=30)


async def _route_buyer_to_peer(stack: Stack, peer: Peer, siren: str, siret: str) -> None:
    """Both directories name platform B for this buyer: A's sends it there,
    B's keeps it (B's own id)."""
    entry = directory_pb2.DirectoryEntry(siren=siren, siret=siret, platform_id=PEER)
    for route in (stack.route, peer.route):
        async with demo_channel(route) as channel:
            await directory_pb2_grpc.DirectoryServiceStub(channel).Upsert(
                directory_pb2.UpsertRequest(entry=entry), timeout=10
            )


async def _received_messages(peer_or_local_url: str, invoice_id: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(peer_or_local_url)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(
            "SELECT message_id, status_code, body FROM status.received_lifecycle_messages"
            " WHERE invoice_id = $1 ORDER BY received_at",
            invoice_id,
        )
        return rows
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def cdv() -> CdvRules:
    release = load_book().in_force(datetime.now(UTC).date())
    return CdvRules.of(release)


async def test_an_invoice_goes_to_the_buyers_platform_and_its_statuses_come_back(
    stack: Stack, peer: Peer, cdv: CdvRules
) -> None:
    since = datetime.now(UTC) - timedelta(seconds=5)
    buyer_siren = fresh_siren()
    buyer_siret = siret_of(buyer_siren)
    await _route_buyer_to_peer(stack, peer, buyer_siren, buyer_siret)
    supplier = new_account(roles=("supplier",), sirens=(SAMPLE_SELLER,))
    buyer = new_account(roles=("buyer",), sirens=(buyer_siren,))

    document = invoice_for(buyer_siren, buyer_siret)
    number = document.split(b"<cbc:ID>", 1)[1].split(b"<", 1)[0].decode()
    invoice_id = (await submit(stack.ingest, document, "to-peer.xml", metadata=supplier.metadata())).invoice_id

    # A: 201 routed to B, then 202 once B acknowledged.
    await _reaches(stack.status, invoice_id, supplier, 202)
    # B: the same invoice, for its buyer, made available.
    [remote] = await _until("the invoice on platform B", lambda: _on_peer(peer, buyer, number, since))
    await _reaches(peer.status, remote.invoice_id, buyer, 203)

    # The buyer, on B: in hand, approved, paid. A learns each from B's CDAR.
    await _update(peer.status, buyer, remote.invoice_id, 204)
    await _update(peer.status, buyer, remote.invoice_id, 205)
    await _update(peer.status, buyer, remote.invoice_id, 211, amount="828.00", paid_on=since.date().isoformat())
    await _reaches(stack.status, invoice_id, supplier, 211)
    # The buyer's statuses of this invoice come from B only: on A's copy
    # they are refused, so the two histories cannot disagree.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _update(stack.status, buyer, invoice_id, 210)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "delivered to platform peer" in (refused.value.details() or "")
    # The supplier, on A: cashed. B learns it from A's CDAR.
    await _update(stack.status, supplier, invoice_id, 212, amount="828.00", paid_on=since.date().isoformat())
    there = await _reaches(peer.status, remote.invoice_id, buyer, 212)
    here = await get_invoice(stack.status, invoice_id, supplier)

    assert _codes(here) == [200, 201, 202, 203, 204, 205, 211, 212]
    assert _codes(there) == [200, 203, 204, 205, 211, 212]
    assert {h.actor for h in here.history if h.status_code in (203, 204, 205, 211)} == {f"platform:{PEER}"}
    assert [h.actor for h in there.history if h.status_code == 212] == ["platform:local"]
    assert here.history[-2].payment.amount == "828.00" and there.history[-1].payment.amount == "828.00"

    # On the wire: one CDAR message per status each way, each one valid.
    to_a = await _received_messages(stack.database_url, invoice_id)
    to_b = await _received_messages(peer.database_url, remote.invoice_id)
    assert [r["status_code"] for r in to_a] == [203, 204, 205, 211]
    assert [r["status_code"] for r in to_b] == [212]
    for row in (*to_a, *to_b):
        assert cdv.check(bytes(row["body"])) == [], row["message_id"]


async def test_a_destination_down_for_a_while_gets_the_invoice_once_it_is_back(stack: Stack, peer: Peer) -> None:
    since = datetime.now(UTC) - timedelta(seconds=5)
    buyer_siren = fresh_siren()
    buyer_siret = siret_of(buyer_siren)
    await _route_buyer_to_peer(stack, peer, buyer_siren, buyer_siret)
    supplier = new_account(roles=("supplier",), sirens=(SAMPLE_SELLER,))
    buyer = new_account(roles=("buyer",), sirens=(buyer_siren,))
    two = _env(PLATFORMS="2")

    await _stack("stop", "peer-ingest", env=two)
    try:
        document = invoice_for(buyer_siren, buyer_siret)
        number = document.split(b"<cbc:ID>", 1)[1].split(b"<", 1)[0].decode()
        invoice_id = (await submit(stack.ingest, document, "while-down.xml", metadata=supplier.metadata())).invoice_id
        view = await _reaches(stack.status, invoice_id, supplier, 201)
        # A cannot deliver while B's ingest is down: it keeps the invoice at 201.
        await _until("a failed delivery attempt", lambda: _delivery_retries(stack))
        view = await get_invoice(stack.status, invoice_id, supplier)
        assert _codes(view)[-1] == 201 and not view.HasField("hold")
    finally:
        await _stack("up", env=two)

    await _reaches(stack.status, invoice_id, supplier, 202)
    await _reaches(stack.status, invoice_id, supplier, 203)
    # Exactly one invoice on B, however many attempts it took.
    assert len(await _on_peer(peer, buyer, number, since)) == 1


async def _delivery_retries(stack: Stack) -> bool:
    """Whether A's delivery stage has retried a delivery (its metric)."""
    import httpx

    address = os.environ.get("ROUTE_METRICS_ADDR", "127.0.0.1:17103")
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://{address}/metrics", timeout=10)).text
    return any(
        line.startswith("invoicing_delivery_attempts_total") and 'outcome="retry"' in line and not line.endswith(" 0.0")
        for line in text.splitlines()
    )
