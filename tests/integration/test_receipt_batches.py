"""Ingest's receipts are written by group commit: submissions that arrive
while a transaction is busy share the next one. Each submission must still
see what it saw with a transaction of its own. These tests hold the first
submission inside its body so that the next ones queue up and form one
batch, then check rows and answers in a fresh schema of the stack's
PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from importlib.resources import files

import asyncpg  # type: ignore[import-untyped]
import pytest

from invoicing_common.db import Database
from invoicing_ingest.domain import Receipt, Submission, new_receipt
from invoicing_ingest.repository import ConflictingRetry, ReceiptRepository
from tests.support import Stack

pytestmark = pytest.mark.stack

Body = Callable[[Receipt], Awaitable[None]]


class SendFailed(Exception):
    pass


def submission(document: bytes, key: str | None = None, submitter: str = "erp") -> Submission:
    return Submission(
        document=document,
        filename="f.xml",
        idempotency_key=key,
        submitter=submitter,
        sha256=hashlib.sha256(document).hexdigest(),
    )


async def succeed(_: Receipt) -> None:
    return None


async def fail(_: Receipt) -> None:
    raise SendFailed


@pytest.fixture
async def store(stack: Stack) -> AsyncIterator[tuple[ReceiptRepository, Database]]:
    schema = f"ingest_batch_{uuid.uuid4().hex[:8]}"
    database = Database(stack.database_url, schema=schema, migrations=files("invoicing_ingest") / "migrations")
    await database.start()
    try:
        yield ReceiptRepository(database), database
    finally:
        async with database.pool.acquire() as conn:
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await database.stop()


async def submit(repository: ReceiptRepository, sub: Submission, body: Body = succeed) -> Receipt:
    async with repository.reserve(sub, new_receipt(datetime.now(UTC))) as receipt:
        await body(receipt)
    return receipt


async def one_batch(
    repository: ReceiptRepository, items: list[tuple[Submission, Body]]
) -> list[Receipt | BaseException]:
    """Submit ``items`` so that they share one batch: a first submission
    holds the writer in its body until all of them are queued."""
    release = asyncio.Event()
    entered = asyncio.Event()

    async def hold(_: Receipt) -> None:
        entered.set()
        await release.wait()

    holder = asyncio.create_task(submit(repository, submission(uuid.uuid4().bytes), hold))
    await entered.wait()
    before = repository.batches
    tasks = [asyncio.create_task(submit(repository, sub, body)) for sub, body in items]
    while repository.queued < len(items):
        await asyncio.sleep(0)  # lets the tasks run up to their enqueue; no timing involved
    release.set()
    await holder
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert repository.batches == before + 1, "the queued submissions shared one batch"
    return results


async def rows(database: Database) -> dict[str, tuple[str, str]]:
    async with database.pool.acquire() as conn:
        return {
            str(r["invoice_id"]): (r["submitter"], r["sha256"])
            for r in await conn.fetch("SELECT invoice_id, submitter, sha256 FROM receipts")
        }


async def keys(database: Database) -> dict[str, str]:
    async with database.pool.acquire() as conn:
        return {
            r["idempotency_key"]: str(r["invoice_id"])
            for r in await conn.fetch("SELECT idempotency_key, invoice_id FROM idempotency_keys")
        }


async def test_concurrent_submissions_share_one_transaction(store: tuple[ReceiptRepository, Database]) -> None:
    repository, database = store
    documents = [f"invoice {i}".encode() for i in range(20)]
    results = await one_batch(repository, [(submission(d, key=f"k{i}"), succeed) for i, d in enumerate(documents)])
    receipts = [r for r in results if isinstance(r, Receipt)]
    assert len(receipts) == 20 and not any(r.duplicate for r in receipts)
    stored = await rows(database)
    assert {r.invoice_id for r in receipts} <= set(stored)
    assert await keys(database) == {f"k{i}": r.invoice_id for i, r in enumerate(receipts)}
    # A later retry of any of them is a duplicate with the same receipt.
    again = await submit(repository, submission(documents[7], key="k7"))
    assert again.duplicate and again.invoice_id == receipts[7].invoice_id and again.event_id == receipts[7].event_id


async def test_same_document_twice_in_a_batch_is_one_invoice(store: tuple[ReceiptRepository, Database]) -> None:
    repository, database = store
    results = await one_batch(repository, [(submission(b"same"), succeed), (submission(b"same"), succeed)])
    first, second = results
    assert isinstance(first, Receipt) and isinstance(second, Receipt)
    assert not first.duplicate and second.duplicate and second.invoice_id == first.invoice_id
    assert sum(1 for s in (await rows(database)).values() if s[1] == hashlib.sha256(b"same").hexdigest()) == 1


async def test_a_failed_send_removes_only_its_own_receipt(store: tuple[ReceiptRepository, Database]) -> None:
    repository, database = store
    results = await one_batch(
        repository,
        [(submission(b"a", key="ka"), succeed), (submission(b"b", key="kb"), fail), (submission(b"c"), succeed)],
    )
    a, b, c = results
    assert isinstance(a, Receipt) and isinstance(c, Receipt)
    assert isinstance(b, SendFailed)
    stored = await rows(database)
    assert a.invoice_id in stored and c.invoice_id in stored
    assert hashlib.sha256(b"b").hexdigest() not in {s[1] for s in stored.values()}
    assert await keys(database) == {"ka": a.invoice_id}
    # Nothing of the failed submission was kept: its retry is a new invoice.
    retry = await submit(repository, submission(b"b", key="kb"))
    assert not retry.duplicate


async def test_a_duplicate_of_a_failed_send_is_told_to_retry(store: tuple[ReceiptRepository, Database]) -> None:
    repository, database = store
    results = await one_batch(repository, [(submission(b"x"), fail), (submission(b"x"), succeed)])
    failed, duplicate = results
    assert isinstance(failed, SendFailed)
    # Its receipt was the failed one's, which is gone: a transient error
    # (UNAVAILABLE for the client), never an answer naming a lost invoice.
    assert isinstance(duplicate, asyncpg.exceptions.SerializationError)
    assert hashlib.sha256(b"x").hexdigest() not in {s[1] for s in (await rows(database)).values()}


async def test_a_key_conflict_refuses_only_the_submission_at_fault(store: tuple[ReceiptRepository, Database]) -> None:
    repository, database = store
    earlier = await submit(repository, submission(b"first", key="k"))
    results = await one_batch(
        repository,
        [
            (submission(b"other", key="k"), succeed),  # key already names another document
            (submission(b"fine", key="k2"), succeed),
            (submission(b"new", key="k3"), succeed),
            (submission(b"also new", key="k3"), succeed),  # same key as the one before, in the same batch
        ],
    )
    conflict, fine, new, also_new = results
    assert isinstance(conflict, ConflictingRetry) and conflict.invoice_id == earlier.invoice_id
    assert isinstance(fine, Receipt) and isinstance(new, Receipt)
    assert isinstance(also_new, ConflictingRetry) and also_new.invoice_id == new.invoice_id
    stored = await rows(database)
    assert hashlib.sha256(b"other").hexdigest() not in {s[1] for s in stored.values()}
    assert hashlib.sha256(b"also new").hexdigest() not in {s[1] for s in stored.values()}
    assert await keys(database) == {"k": earlier.invoice_id, "k2": fine.invoice_id, "k3": new.invoice_id}


async def test_a_submitter_that_gives_up_before_its_turn_leaves_nothing(
    store: tuple[ReceiptRepository, Database],
) -> None:
    repository, database = store
    release = asyncio.Event()
    entered = asyncio.Event()

    async def hold(_: Receipt) -> None:
        entered.set()
        await release.wait()

    holder = asyncio.create_task(submit(repository, submission(b"holder"), hold))
    await entered.wait()
    abandoned = asyncio.create_task(submit(repository, submission(b"abandoned")))
    kept = asyncio.create_task(submit(repository, submission(b"kept")))
    while repository.queued < 2:
        await asyncio.sleep(0)
    abandoned.cancel()
    with pytest.raises(asyncio.CancelledError):
        await abandoned
    release.set()
    await holder
    receipt = await kept
    stored = await rows(database)
    assert receipt.invoice_id in stored
    assert hashlib.sha256(b"abandoned").hexdigest() not in {s[1] for s in stored.values()}
