"""Quotas and limits: per-account request rate and concurrent watches,
answered RESOURCE_EXHAUSTED with a retry hint and counted by reason;
expired tokens; oversized messages. A second status instance runs beside
the stack with small limits and no clock skew allowance, configured as the
stack configures its own (its principal, its role, TLS, the issuer)."""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import grpc
import httpx
import pytest
from invoicing.v1 import ingest_pb2, ingest_pb2_grpc, status_pb2, status_pb2_grpc

from invoicing_common.auth.client import TokenSource
from tests.support import (
    Caller,
    Stack,
    anonymous_channel,
    ca_file,
    client_config,
    demo_tokens,
    free_port,
    new_account,
    submit,
    unique_invoice,
    wait_serving,
)

pytestmark = pytest.mark.stack

RATE, BURST, WATCHES = 2, 4, 1


@pytest.fixture(scope="module")
def limited(stack: Stack) -> Iterator[tuple[str, str]]:
    """(gRPC address, metrics address) of a status instance with small quotas."""
    port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        **stack.service_env("status"),
        "GRPC_PORT": str(port),
        "METRICS_PORT": str(metrics_port),
        "QUOTA_REQUESTS_PER_SECOND": str(RATE),
        "QUOTA_BURST": str(BURST),
        "QUOTA_STREAMS": str(WATCHES),
        "OIDC_CLOCK_SKEW_SECONDS": "0",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoicing_status"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        asyncio.run(wait_serving(f"127.0.0.1:{port}", proc))
        yield f"127.0.0.1:{port}", f"127.0.0.1:{metrics_port}"
    finally:
        proc.terminate()
        proc.wait(timeout=60)


async def _list(address: str, caller: Caller) -> None:
    async with caller.channel(address) as channel:
        await status_pb2_grpc.StatusServiceStub(channel).ListInvoices(
            status_pb2.ListInvoicesRequest(page_size=1), timeout=10
        )


async def test_a_burst_over_the_rate_limit_is_refused_with_a_retry_hint(limited: tuple[str, str]) -> None:
    address, metrics = limited
    greedy, patient = new_account(), new_account()
    refusal: grpc.aio.AioRpcError | None = None
    async with greedy.channel(address) as channel:
        stub = status_pb2_grpc.StatusServiceStub(channel)
        started = time.monotonic()
        for _ in range(3 * BURST):
            try:
                await stub.ListInvoices(status_pb2.ListInvoicesRequest(page_size=1), timeout=10)
            except grpc.aio.AioRpcError as exc:
                refusal = exc
                break
        elapsed = time.monotonic() - started
    assert refusal is not None, f"{3 * BURST} calls in {elapsed:.2f}s were all served"
    assert refusal.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "rate limit" in (refusal.details() or "") and f"{RATE}" in (refusal.details() or "")
    hint = dict(refusal.trailing_metadata() or ())
    assert int(hint["retry-after-ms"]) > 0
    # Another account is not held back by this one.
    await _list(address, patient)
    # And the refusal is counted by reason.
    async with httpx.AsyncClient() as client:
        scraped = (await client.get(f"http://{metrics}/metrics", timeout=10)).text
    assert re.search(r'invoicing_auth_refusals_total\{[^}]*reason="rate_limited"[^}]*\} [1-9]', scraped)


async def test_concurrent_watches_are_capped_per_account_and_a_closed_one_frees_its_slot(
    limited: tuple[str, str],
) -> None:
    address, _ = limited
    watcher = new_account()
    async with watcher.channel(address) as channel:
        stub = status_pb2_grpc.StatusServiceStub(channel)

        async def opened() -> grpc.aio.UnaryStreamCall[Any, Any]:
            # From the first position: the samples' history gives the new
            # stream a message at once, which proves it open.
            call = stub.WatchInvoices(status_pb2.WatchInvoicesRequest(from_position=1))
            await asyncio.wait_for(call.read(), 10)
            return call

        first = await opened()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await opened()
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"the limit is {WATCHES} per account" in (refused.value.details() or "")
        assert int(dict(refused.value.trailing_metadata() or ())["retry-after-ms"]) > 0
        first.cancel()
        # The server learns of the cancellation asynchronously: retry until
        # the slot is free, within a bound (and within the rate limit).
        deadline = time.monotonic() + 10
        while True:
            try:
                third = await opened()
                break
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert time.monotonic() < deadline, "the closed stream's slot was never released"
            await asyncio.sleep(0.5)  # bounded retry of a condition, within the quota
        third.cancel()


def _short_lived_account(seconds: int) -> tuple[Caller, str]:
    """An account whose tokens live ``seconds`` (a client attribute of
    Keycloak, set through the admin API as the demo account)."""
    account = new_account()
    config = client_config()
    base = config.token_url.split("/realms/")[0]
    realm = config.token_url.split("/realms/")[1].split("/")[0]
    headers = {"Authorization": f"Bearer {demo_tokens().token()}"}
    verify = ssl.create_default_context(cafile=ca_file())
    with httpx.Client(base_url=f"{base}/admin/realms/{realm}", headers=headers, verify=verify) as admin:
        (client,) = admin.get("/clients", params={"clientId": account.client_id}).json()
        client["attributes"] = {**client.get("attributes", {}), "access.token.lifespan": str(seconds)}
        assert admin.put(f"/clients/{client['id']}", json=client).status_code == 204
        secret = admin.get(f"/clients/{client['id']}/client-secret").json()["value"]
    return Caller(account.client_id, TokenSource(config.token_url, account.client_id, secret, config.ca_file)), secret


async def test_an_expired_token_is_refused(limited: tuple[str, str]) -> None:
    address, _ = limited
    caller, _ = _short_lived_account(3)
    token = caller.token()
    metadata = (("authorization", f"Bearer {token}"),)
    async with anonymous_channel(address) as channel:
        stub = status_pb2_grpc.StatusServiceStub(channel)
        # Accepted while valid (the verified token is cached from here on)...
        await stub.ListInvoices(status_pb2.ListInvoicesRequest(page_size=1), metadata=metadata, timeout=10)
        # ...and refused once it has expired, cache or not.
        deadline = time.monotonic() + 20
        while True:
            try:
                await stub.ListInvoices(status_pb2.ListInvoicesRequest(page_size=1), metadata=metadata, timeout=10)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
                assert exc.details() == "invalid or expired token"
                break
            assert time.monotonic() < deadline, "an expired token was still accepted"
            await asyncio.sleep(0.5)  # waiting for the token's expiry, bounded


async def _receipts(stack: Stack, submitter: str) -> int:
    conn = await asyncpg.connect(stack.database_url)
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM ingest.receipts WHERE submitter = $1", submitter)
        return count
    finally:
        await conn.close()


async def test_oversized_documents_and_messages_are_refused_and_store_nothing(stack: Stack) -> None:
    caller = new_account()
    doc, _ = unique_invoice("ubl-invoice-valid.xml")

    async def send(size: int) -> grpc.aio.AioRpcError:
        padding = b"<!--" + b"x" * size + b"-->"
        big = doc.replace(b"?>", b"?>" + padding, 1)
        async with anonymous_channel(stack.ingest) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await ingest_pb2_grpc.IngestServiceStub(channel).SubmitInvoice(
                    ingest_pb2.SubmitInvoiceRequest(document=big, filename="big.xml"),
                    metadata=caller.metadata(),
                    timeout=60,
                )
        return refused.value

    over_document = await send(21 * 1024 * 1024)
    assert over_document.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "document" in (over_document.details() or "") and "limit" in (over_document.details() or "")
    over_message = await send(33 * 1024 * 1024)
    assert over_message.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await _receipts(stack, caller.subject()) == 0


async def test_a_watch_ends_with_its_token_and_says_where_to_resume(stack: Stack, limited: tuple[str, str]) -> None:
    address, _ = limited
    caller, secret = _short_lived_account(3)
    async with anonymous_channel(address) as channel:
        stub = status_pb2_grpc.StatusServiceStub(channel)
        watch = stub.WatchInvoices(
            status_pb2.WatchInvoicesRequest(), metadata=(("authorization", f"Bearer {caller.token()}"),)
        )
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            # Bounded by the token's 3 s lifetime; events may come first.
            await asyncio.wait_for(_drain(watch), 30)
        assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
        resume = int(dict(ended.value.trailing_metadata() or ())["resume-from-position"])
        # An invoice the account sees, made available after the stream ended,
        # is the first thing a new stream from that position shows.
        doc, _ = unique_invoice("ubl-invoice-valid.xml")
        invoice_id = (await submit(stack.ingest, doc, "resume.xml")).invoice_id
        # A new token for the same account (the first one has expired).
        fresh = TokenSource(client_config().token_url, caller.client_id, secret, client_config().ca_file)
        again = stub.WatchInvoices(
            status_pb2.WatchInvoicesRequest(from_position=resume),
            metadata=(("authorization", f"Bearer {fresh.token()}"),),
        )
        seen: list[tuple[str, int]] = []

        async def until_made_available() -> None:
            async for reply in again:
                seen.append((reply.event.invoice_id, reply.event.status_code))
                if (invoice_id, 203) in seen:
                    again.cancel()
                    return

        await asyncio.wait_for(until_made_available(), 30)
        assert (invoice_id, 203) in seen


async def _drain(call: Any) -> None:
    async for _ in call:
        pass
