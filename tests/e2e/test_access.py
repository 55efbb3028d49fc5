"""Tenants are kept apart: each account sees and changes only the invoices
of the companies it acts for, and every other id looks like one that does
not exist. Accounts are made as an administrator would, with
`invoicectl accounts create`, in the stack's real identity provider."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import grpc
import httpx
import pytest
from invoicing.v1 import common_pb2, directory_pb2, directory_pb2_grpc, status_pb2, status_pb2_grpc

from invoicing_common.auth.client import TokenSource
from tests.integration.test_directory_api import fresh_siren
from tests.support import (
    ROOT,
    SAMPLE_BUYER,
    Caller,
    Stack,
    anonymous_channel,
    client_config,
    collect_until_final,
    get_invoice,
    invoice_from,
    new_account,
    submit,
)

pytestmark = pytest.mark.stack

INVOICECTL = str(ROOT / ".venv" / "bin" / "invoicectl")


def invoicectl(*args: str, account: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if account is not None:
        env |= {"INVOICING_CLIENT_ID": account["client_id"], "INVOICING_CLIENT_SECRET": account["client_secret"]}
    return subprocess.run(
        [INVOICECTL, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


def cli_account(*args: str) -> dict[str, Any]:
    """`invoicectl accounts create ... --json`, as the demo account (directory-admin)."""
    done = invoicectl("accounts", "create", *args, "--json")
    assert done.returncode == 0, done.stderr
    account: dict[str, Any] = json.loads(done.stdout)
    return account


def caller_of(account: dict[str, Any]) -> Caller:
    config = client_config()
    tokens = TokenSource(config.token_url, account["client_id"], account["client_secret"], config.ca_file)
    return Caller(account["client_id"], tokens)


@pytest.fixture
def two_tenants() -> Iterator[tuple[dict[str, Any], dict[str, Any], str, str]]:
    """Accounts A and B, supplier and buyer each of its own company."""
    siren_a, siren_b = fresh_siren(), fresh_siren()
    a = cli_account("--role", "supplier", "--role", "buyer", "--siren", siren_a)
    b = cli_account("--role", "supplier", "--role", "buyer", "--siren", siren_b)
    yield a, b, siren_a, siren_b
    for account in (a, b):
        invoicectl("accounts", "delete", account["client_id"])


async def _final(follower: object, invoice_id: str) -> int:
    events = await collect_until_final(follower, {invoice_id})  # type: ignore[arg-type]
    return events[invoice_id][-1].status_code


async def test_two_accounts_cannot_see_or_change_each_others_invoices(
    stack: Stack, status_follower: object, two_tenants: tuple[dict[str, Any], dict[str, Any], str, str]
) -> None:
    account_a, account_b, siren_a, _ = two_tenants
    a, b = caller_of(account_a), caller_of(account_b)
    since = datetime.now(UTC)
    doc, _ = invoice_from(siren_a)
    mine = await submit(stack.ingest, doc, "tenant-a.xml", metadata=a.metadata())
    assert await _final(status_follower, mine.invoice_id) == 203
    nowhere = str(uuid.uuid4())

    # gRPC: every read and write of A's invoice by B is answered NOT_FOUND,
    # word for word as for an id that exists nowhere.
    async def refusal(caller: Caller, invoice_id: str) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await get_invoice(stack.status, invoice_id, caller)
        return refused.value.code(), (refused.value.details() or "").replace(invoice_id, "ID")

    assert (
        await refusal(b, mine.invoice_id)
        == await refusal(b, nowhere)
        == (grpc.StatusCode.NOT_FOUND, "invoice_id: no invoice ID")
    )

    async with b.channel(stack.status) as channel:
        stub = status_pb2_grpc.StatusServiceStub(channel)
        flt = status_pb2.InvoiceFilter()
        flt.received_from.FromDatetime(since)
        # Asked for by A's company: nothing (not the page that happens to come first).
        by_seller = status_pb2.InvoiceFilter(seller_id=siren_a)
        listed = await stub.ListInvoices(status_pb2.ListInvoicesRequest(filter=by_seller, page_size=500), timeout=30)
        assert list(listed.invoices) == []
        with pytest.raises(grpc.aio.AioRpcError) as update:
            await stub.UpdateStatus(
                status_pb2.UpdateStatusRequest(
                    invoice_id=mine.invoice_id, status_code=210, reason=common_pb2.Reason(code="X", text="y")
                ),
                timeout=30,
            )
        assert update.value.code() == grpc.StatusCode.NOT_FOUND
        # A watch from the first position shows B nothing of A's: its own
        # invoice's events mark where "everything so far" ends.
        own, _ = invoice_from(_siren_of(account_b))
        theirs = await submit(stack.ingest, own, "tenant-b.xml", metadata=b.metadata())
        assert await _final(status_follower, theirs.invoice_id) == 203
        seen: list[str] = []
        call = stub.WatchInvoices(status_pb2.WatchInvoicesRequest(filter=flt, from_position=1))

        async def until_own_final() -> None:
            async for reply in call:
                seen.append(reply.event.invoice_id)
                if reply.event.invoice_id == theirs.invoice_id and reply.event.status_code == 203:
                    call.cancel()
                    return

        await asyncio.wait_for(until_own_final(), 30)
        assert mine.invoice_id not in seen and theirs.invoice_id in seen

    # Nothing changed, and A still sees its invoice.
    reply = await get_invoice(stack.status, mine.invoice_id, a)
    assert [h.status_code for h in reply.history] == [200, 203]

    # The CLI says the same: exit 1, NOT_FOUND, for status, update and watch.
    for command in (
        ("status", mine.invoice_id),
        ("update", mine.invoice_id, "--status", "204"),
    ):
        done = invoicectl(*command, account=account_b)
        assert done.returncode == 1 and "NOT_FOUND" in done.stderr, (command, done.stdout, done.stderr)
    done = invoicectl("list", "--json", "--since", since.isoformat(), account=account_b)
    assert done.returncode == 0 and mine.invoice_id not in done.stdout
    done = invoicectl("list", "--json", "--since", since.isoformat(), account=account_a)
    assert done.returncode == 0 and mine.invoice_id in done.stdout
    done = invoicectl("watch", "--from", "1", "--json", "--since", since.isoformat(), "--limit", "2", account=account_b)
    assert done.returncode == 0 and mine.invoice_id not in done.stdout and theirs.invoice_id in done.stdout


def _siren_of(account: dict[str, Any]) -> str:
    (siren,) = account["sirens"]
    return str(siren)


async def test_an_invoice_for_a_company_the_account_does_not_act_for_ends_rejected_and_claims_nothing(
    stack: Stack, status_follower: object, two_tenants: tuple[dict[str, Any], dict[str, Any], str, str]
) -> None:
    account_a, account_b, siren_a, _ = two_tenants
    # B sends an invoice in A's name: refused, with a reason that says so.
    forged, number = invoice_from(siren_a)
    attempt = await submit(stack.ingest, forged, "forged.xml", metadata=caller_of(account_b).metadata())
    assert await _final(status_follower, attempt.invoice_id) == 213
    view = await get_invoice(stack.status, attempt.invoice_id, caller_of(account_b))
    assert view.reason.code == "REJ_COH"
    assert f"seller SIREN {siren_a} is not a company the submitting account acts for" == view.reason.text
    assert any(f.rule == "SELLER-ACCOUNT" for f in view.findings)
    # The forged invoice stays the forger's: the company it names does not
    # find it in its views, nor does the buyer it names.
    for named in (caller_of(account_a), new_account(roles=("buyer",), sirens=(SAMPLE_BUYER,))):
        with pytest.raises(grpc.aio.AioRpcError) as hidden:
            await get_invoice(stack.status, attempt.invoice_id, named)
        assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
    # The real seller can still send that invoice number: the forged one
    # held no business key (no REJ_UNI).
    genuine = forged.replace(b"<!--", b"<!-- genuine", 1)
    sent = await submit(stack.ingest, genuine, "genuine.xml", metadata=caller_of(account_a).metadata())
    assert await _final(status_follower, sent.invoice_id) == 203, number


async def test_each_party_sets_only_its_own_statuses(stack: Stack, status_follower: object) -> None:
    seller = fresh_siren()
    supplier = new_account(roles=("supplier",), sirens=(seller,))
    buyer = new_account(roles=("buyer",), sirens=(SAMPLE_BUYER,))
    doc, _ = invoice_from(seller)
    invoice_id = (await submit(stack.ingest, doc, "parties.xml", metadata=supplier.metadata())).invoice_id
    assert await _final(status_follower, invoice_id) == 203

    async def update(caller: Caller, code: int, paid: bool = False) -> status_pb2.UpdateStatusResponse:
        request = status_pb2.UpdateStatusRequest(invoice_id=invoice_id, status_code=code)
        if paid:  # 211 and 212 carry the payment
            request.payment.amount, request.payment.paid_on = "828.00", datetime.now(UTC).date().isoformat()
        async with caller.channel(stack.status) as channel:
            reply: status_pb2.UpdateStatusResponse = await status_pb2_grpc.StatusServiceStub(channel).UpdateStatus(
                request, timeout=30
            )
            return reply

    async def refused(caller: Caller, code: int) -> str:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await update(caller, code)
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED, error.value.details()
        return error.value.details() or ""

    # A supplier setting a buyer status, a buyer setting a supplier status.
    assert "buyer" in await refused(supplier, 204)
    assert (await update(buyer, 204)).status_code == 204
    assert (await update(buyer, 211, paid=True)).status_code == 211
    assert "supplier" in await refused(buyer, 212)
    history = [h.status_code for h in (await get_invoice(stack.status, invoice_id, supplier)).history]
    assert history == [200, 203, 204, 211]
    assert (await update(supplier, 212, paid=True)).status_code == 212
    # The buyer sees the invoice (it is addressed to its company) and who did what.
    final = await get_invoice(stack.status, invoice_id, buyer)
    assert [h.actor.split(":")[0] for h in final.history[-3:]] == ["buyer", "buyer", "supplier"]
    assert final.history[-1].actor == f"supplier:{supplier.subject()}"


async def test_an_operator_reads_every_tenant_and_changes_nothing(stack: Stack, status_follower: object) -> None:
    seller = fresh_siren()
    supplier = new_account(roles=("supplier",), sirens=(seller,))
    operator = new_account(roles=("operator",), sirens=())
    doc, _ = invoice_from(seller)
    invoice_id = (await submit(stack.ingest, doc, "ops.xml", metadata=supplier.metadata())).invoice_id
    assert await _final(status_follower, invoice_id) == 203
    assert (await get_invoice(stack.status, invoice_id, operator)).status_code == 203
    async with operator.channel(stack.status) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as update:
            await status_pb2_grpc.StatusServiceStub(channel).UpdateStatus(
                status_pb2.UpdateStatusRequest(invoice_id=invoice_id, status_code=204), timeout=30
            )
    assert update.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # An operator submits nothing either.
    with pytest.raises(grpc.aio.AioRpcError) as submitted:
        await submit(stack.ingest, invoice_from(seller)[0], "ops.xml", metadata=operator.metadata())
    assert submitted.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_directory_writes_need_directory_admin_and_leave_nothing_behind(stack: Stack) -> None:
    supplier = new_account(roles=("supplier", "buyer"), sirens=(SAMPLE_BUYER,))
    siren = fresh_siren()
    entry = directory_pb2.DirectoryEntry(siren=siren, platform_id="elsewhere")
    async with supplier.channel(stack.route) as channel:
        stub = directory_pb2_grpc.DirectoryServiceStub(channel)
        calls = {
            "Upsert": stub.Upsert(directory_pb2.UpsertRequest(entry=entry), timeout=30),
            "Delete": stub.Delete(directory_pb2.DeleteRequest(entry_id=SAMPLE_BUYER), timeout=30),
            "UpsertService": stub.UpsertService(
                directory_pb2.UpsertServiceRequest(service=directory_pb2.BuyerService(siren=siren, code="S1")),
                timeout=30,
            ),
        }
        for name, call in calls.items():
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, name
            assert "directory-admin" in (refused.value.details() or "")

        async def rows() -> Any:
            yield directory_pb2.ImportRequest(entries=[directory_pb2.EntryRow(line=2, entry=entry)])

        with pytest.raises(grpc.aio.AioRpcError) as imported:
            await stub.Import(rows(), timeout=30)
        assert imported.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # Reads are open to any account, and show that nothing was written.
        resolved = await stub.Resolve(
            directory_pb2.ResolveRequest(buyer_endpoint=common_pb2.PartyIdentifier(value=siren, scheme="0225")),
            timeout=30,
        )
        assert resolved.reason.code == "REJ_ADR"
        kept = await stub.Get(directory_pb2.GetRequest(entry_id=SAMPLE_BUYER), timeout=30)
        assert kept.entry.siren == SAMPLE_BUYER


async def test_idempotency_keys_and_retries_are_scoped_per_account(stack: Stack) -> None:
    first, second = new_account(), new_account()
    doc, _ = invoice_from("842109373")
    key = f"shared-{uuid.uuid4().hex}"
    one = await submit(stack.ingest, doc, "k.xml", key=key, metadata=first.metadata())
    # The same key and bytes from another account: a new invoice, not a
    # retry, and nothing about the first one is revealed.
    two = await submit(stack.ingest, doc, "k.xml", key=key, metadata=second.metadata())
    assert not two.duplicate and two.invoice_id != one.invoice_id
    other, _ = invoice_from("842109373")
    with pytest.raises(grpc.aio.AioRpcError) as conflict:
        await submit(stack.ingest, other, "k.xml", key=key, metadata=second.metadata())
    assert conflict.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = conflict.value.details() or ""
    assert two.invoice_id in details and one.invoice_id not in details


async def test_a_call_without_a_token_is_refused_and_health_stays_open(stack: Stack) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    for address in (stack.ingest, stack.validate, stack.route, stack.status):
        async with anonymous_channel(address) as channel:
            health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING, address
    for address in (stack.ingest, stack.status, stack.route):
        async with anonymous_channel(address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await status_pb2_grpc.StatusServiceStub(channel).ListInvoices(
                    status_pb2.ListInvoicesRequest(), timeout=10
                )
            # ListInvoices exists on status only; elsewhere the method is unknown.
            expected = grpc.StatusCode.UNAUTHENTICATED if address == stack.status else grpc.StatusCode.UNIMPLEMENTED
            assert refused.value.code() == expected, address
    async with anonymous_channel(stack.ingest) as channel:
        from invoicing.v1 import ingest_pb2, ingest_pb2_grpc

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await ingest_pb2_grpc.IngestServiceStub(channel).SubmitInvoice(
                ingest_pb2.SubmitInvoiceRequest(document=b"<Invoice/>", filename="x.xml"), timeout=10
            )
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert refused.value.details() == "missing bearer token"


def test_the_accounts_command_refuses_bad_input_and_non_admins() -> None:
    bad = invoicectl("accounts", "create", "--role", "king", "--siren", "842109373", "--json")
    assert bad.returncode == 2 and "role" in bad.stderr
    bad = invoicectl("accounts", "create", "--role", "supplier", "--siren", "123456789", "--json")
    assert bad.returncode == 2 and "123456789" in bad.stderr and "SIREN" in bad.stderr
    plain = cli_account("--role", "supplier", "--siren", "842109373")
    try:
        refused = invoicectl("accounts", "create", "--role", "operator", "--json", account=plain)
        assert refused.returncode == 1 and "directory-admin" in refused.stderr
        # The identity provider refuses it too, whatever the CLI checks first.
        config = client_config()
        base, realm = config.token_url.split("/realms/")
        supplier_token = caller_of(plain).token()
        direct = httpx.post(
            f"{base}/admin/realms/{realm.split('/')[0]}/clients",
            json={"clientId": f"sneaky-{uuid.uuid4().hex[:8]}", "serviceAccountsEnabled": True},
            headers={"Authorization": f"Bearer {supplier_token}"},
            verify=ssl.create_default_context(cafile=config.ca_file),
        )
        assert direct.status_code == 403
    finally:
        invoicectl("accounts", "delete", plain["client_id"])
    # And accounts delete removes accounts only, not the realm's own clients.
    kept = invoicectl("accounts", "delete", "admin-cli")
    assert kept.returncode == 2 and "not an account" in kept.stderr


async def _watched(caller: Caller, address: str, flt: status_pb2.InvoiceFilter, invoice_id: str) -> list[int]:
    """The status codes a watch from the first position shows ``caller`` for
    ``invoice_id``, up to its final status."""
    seen: list[int] = []
    async with caller.channel(address) as channel:
        call = status_pb2_grpc.StatusServiceStub(channel).WatchInvoices(
            status_pb2.WatchInvoicesRequest(filter=flt, from_position=1)
        )

        async def until_final() -> None:
            async for reply in call:
                if reply.event.invoice_id == invoice_id:
                    seen.append(reply.event.status_code)
                    if reply.event.status_code in (203, 213):
                        call.cancel()
                        return

        await asyncio.wait_for(until_final(), 60)
    return seen


async def test_what_a_party_watches_does_not_depend_on_when_it_watches(stack: Stack, status_follower: object) -> None:
    # Two accounts of the seller's company; the second did not submit the
    # invoice: it learns of it from the validated document. A watch skips
    # what it may not see, so what it sees must not change with time: a
    # watch opened while the invoice is processed and one opened after show
    # the same, and the deposit (200) is the submitter's alone.
    siren = fresh_siren()
    submitter = new_account(roles=("supplier",), sirens=(siren,))
    seller = new_account(roles=("supplier",), sirens=(siren,))
    flt = status_pb2.InvoiceFilter()
    flt.received_from.FromDatetime(datetime.now(UTC))
    doc, _ = invoice_from(siren)
    reply = await submit(stack.ingest, doc, "party-watch.xml", metadata=submitter.metadata())
    during = await _watched(seller, stack.status, flt, reply.invoice_id)
    assert await _final(status_follower, reply.invoice_id) == 203
    after = await _watched(seller, stack.status, flt, reply.invoice_id)
    assert during == after == [203]
    assert await _watched(submitter, stack.status, flt, reply.invoice_id) == [200, 203]
    # GetInvoice, a read of the moment, shows the seller the whole history.
    got = await get_invoice(stack.status, reply.invoice_id, seller)
    assert [h.status_code for h in got.history] == [200, 203]
