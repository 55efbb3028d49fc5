"""Ingest's receipts are written by group commit: submissions that arrive
while a transaction is busy share the next one. Each submission must still
see what it saw with a transaction of its own, and each new receipt is
committed with its `received` record in the outbox (a duplicate with
none). These tests hold the writer on a row lock taken by another
connection, so that the next submissions queue up and form one batch, then
check rows and answers in a fresh schema of the stack's PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from invoicing_common import topics
from invoicing_common.archive.postgres import PostgresArchive
from invoicing_common.db import Database
from invoicing_common.kafka.outbox import OutboxMessage
from invoicing_ingest.domain import Receipt, Submission, new_receipt
from invoicing_ingest.repository import ConflictingRetry, ReceiptRepository
from tests.support import Stack, scratch_database

pytestmark = pytest.mark.stack


def submission(document: bytes, key: str | None = None, submitter: str = "erp") -> Submission:
    return Submission(
        document=document,
        filename="f.xml",
        idempotency_key=key,
        submitter=submitter,
        sha256=hashlib.sha256(document).hexdigest(),
    )


def announce(receipt: Receipt) -> OutboxMessage:
    return OutboxMessage(topics.RECEIVED, receipt.invoice_id.encode(), receipt.event_id.encode())


@pytest.fixture
async def store(stack: Stack) -> AsyncIterator[tuple[ReceiptRepository, Database]]:
    async with scratch_database(stack.database_url, "ingest_batch", "invoicing_ingest") as database:
        yield ReceiptRepository(database, PostgresArchive(database)), database


async def submit(repository: ReceiptRepository, sub: Submission) -> Receipt:
    return await repository.store(sub, new_receipt(datetime.now(UTC)), announce)


async def one_batch(
    repository: ReceiptRepository, database: Database, subs: list[Submission]
) -> list[Receipt | BaseException]:
    """Submit ``subs`` so that they share one batch: a first submission is
    held in its transaction (its row waits for a lock another connection
    holds) until all of them are queued."""
    holder_doc = uuid.uuid4().bytes
    blocker = await database.connect()
    transaction = blocker.transaction()
    await transaction.start()
    try:
        candidate = new_receipt(datetime.now(UTC))
        await blocker.execute(
            "INSERT INTO receipts (invoice_id, submitter, sha256, filename, size_bytes, received_at, event_id)"
            " VALUES ($1, 'erp', $2, 'f.xml', 1, now(), 'held')",
            candidate.invoice_id,
            hashlib.sha256(holder_doc).hexdigest(),
        )
        before = repository.batches
        holder = asyncio.create_task(submit(repository, submission(holder_doc)))
        while repository.batches == before:
            await asyncio.sleep(0)  # lets the holder's batch start; no timing involved
        tasks = [asyncio.create_task(submit(repository, sub)) for sub in subs]
        while repository.queued < len(subs):
            await asyncio.sleep(0)  # lets the tasks run up to their enqueue; no timing involved
    finally:
        await transaction.rollback()
        await blocker.close()
    held = await holder
    assert not held.duplicate  # the blocking row was rolled back
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert repository.batches == before + 2, "the queued submissions shared one batch"
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


async def announced(database: Database) -> list[str]:
    """The invoices whose `received` record waits in the outbox."""
    async with database.pool.acquire() as conn:
        return [
            bytes(r["key"]).decode()
            for r in await conn.fetch("SELECT key FROM outbox WHERE topic = $1 ORDER BY seq", topics.RECEIVED)
        ]


async def test_concurrent_submissions_share_one_transaction(store: tuple[ReceiptRepository, Database]) -> None:
    repository, database = store
    documents = [f"invoice {i}".encode() for i in range(20)]
    results = await one_batch(repository, database, [submission(d, key=f"k{i}") for i, d in enumerate(documents)])
    receipts = [r for r in results if isinstance(r, Receipt)]
    assert len(receipts) == 20 and not any(r.duplicate for r in receipts)
    stored = await rows(database)
    assert {r.invoice_id for r in receipts} <= set(stored)
    assert await keys(database) == {f"k{i}": r.invoice_id for i, r in enumerate(receipts)}
    # Each receipt was committed with its record, and only those.
    assert sorted(await announced(database)) == sorted(stored)
    # A later retry of any of them is a duplicate with the same receipt, and
    # announces nothing again.
    again = await submit(repository, submission(documents[7], key="k7"))
    assert again.duplicate and again.invoice_id == receipts[7].invoice_id and again.event_id == receipts[7].event_id
    assert sorted(await announced(database)) == sorted(stored)


async def test_same_document_twice_in_a_batch_is_one_invoice(store: tuple[ReceiptRepository, Database]) -> None:
    repository, database = store
    results = await one_batch(repository, database, [submission(b"same"), submission(b"same")])
    first, second = results
    assert isinstance(first, Receipt) and isinstance(second, Receipt)
    assert not first.duplicate and second.duplicate and second.invoice_id == first.invoice_id
    assert sum(1 for s in (await rows(database)).values() if s[1] == hashlib.sha256(b"same").hexdigest()) == 1
    assert (await announced(database)).count(first.invoice_id) == 1


async def test_a_key_conflict_refuses_only_the_submission_at_fault(store: tuple[ReceiptRepository, Database]) -> None:
    repository, database = store
    earlier = await submit(repository, submission(b"first", key="k"))
    results = await one_batch(
        repository,
        database,
        [
            submission(b"other", key="k"),  # key already names another document
            submission(b"fine", key="k2"),
            submission(b"new", key="k3"),
            submission(b"also new", key="k3"),  # same key as the one before, in the same batch
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
    # Nothing announced for the refused ones.
    assert sorted(await announced(database)) == sorted(stored)


async def test_a_submitter_that_gives_up_before_its_turn_leaves_nothing(
    store: tuple[ReceiptRepository, Database],
) -> None:
    repository, database = store
    blocker = await database.connect()
    transaction = blocker.transaction()
    await transaction.start()
    try:
        await blocker.execute(
            "INSERT INTO receipts (invoice_id, submitter, sha256, filename, size_bytes, received_at, event_id)"
            " VALUES ($1, 'erp', $2, 'f.xml', 1, now(), 'held')",
            new_receipt(datetime.now(UTC)).invoice_id,
            hashlib.sha256(b"holder").hexdigest(),
        )
        before = repository.batches
        holder = asyncio.create_task(submit(repository, submission(b"holder")))
        while repository.batches == before:
            await asyncio.sleep(0)
        abandoned = asyncio.create_task(submit(repository, submission(b"abandoned")))
        kept = asyncio.create_task(submit(repository, submission(b"kept")))
        while repository.queued < 2:
            await asyncio.sleep(0)
        abandoned.cancel()
        with pytest.raises(asyncio.CancelledError):
            await abandoned
    finally:
        await transaction.rollback()
        await blocker.close()
    await holder
    receipt = await kept
    stored = await rows(database)
    assert receipt.invoice_id in stored
    assert hashlib.sha256(b"abandoned").hexdigest() not in {s[1] for s in stored.values()}
    assert sorted(await announced(database)) == sorted(stored)
