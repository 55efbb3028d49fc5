"""Ingest's common case, a batch of new documents, is written in one
statement (its own transaction): documents, receipts, keys, outbox rows
and the relay's notification. Anything already there, or committed by
another writer meanwhile, leaves no receipt, key or record behind, and
the batch goes the usual way (tests/integration/test_receipt_batches.py
shows what each submission then sees)."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg  # type: ignore[import-untyped]
import pytest
from opentelemetry import trace

from invoicing_common import topics
from invoicing_common.archive.postgres import PostgresArchive
from invoicing_common.db import Database
from invoicing_common.kafka.outbox import OutboxMessage
from invoicing_ingest.domain import Submission, new_receipt
from invoicing_ingest.repository import _AT_ONCE, ReceiptRepository, _Pending
from tests.support import Stack, scratch_database

pytestmark = pytest.mark.stack

_WAIT_SECONDS = 30.0


def pending(document: bytes, key: str | None = None) -> _Pending:
    sha256 = hashlib.sha256(document).hexdigest()
    return _Pending(
        Submission(
            document=document,
            filename="f.xml",
            idempotency_key=key,
            submitter="erp",
            sha256=sha256,
            media_type="application/xml",
        ),
        new_receipt(datetime.now(UTC)),
        lambda r: OutboxMessage(topics.RECEIVED, r.invoice_id.encode(), r.event_id.encode()),
        trace.INVALID_SPAN,
    )


@pytest.fixture
async def store(stack: Stack) -> AsyncIterator[tuple[ReceiptRepository, Database]]:
    async with scratch_database(stack.database_url, "ingest_at_once", "invoicing_ingest") as database:
        yield ReceiptRepository(database, PostgresArchive(database)), database


async def counts(database: Database, documents: list[_Pending]) -> dict[str, int]:
    """Rows in the scratch schema, and which of ``documents`` the archive
    (one schema for the whole database) holds."""
    async with database.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM receipts) AS receipts, (SELECT count(*) FROM idempotency_keys) AS keys,"
            " (SELECT count(*) FROM outbox) AS records,"
            " (SELECT count(*) FROM archive.documents WHERE sha256 = ANY($1::text[])) AS documents",
            [item.submission.sha256 for item in documents],
        )
    return dict(row)


async def test_a_batch_of_new_documents_is_one_statement(store: tuple[ReceiptRepository, Database]) -> None:
    repository, database = store
    # Documents of their own: the archive is shared with other tests and runs.
    batch = [pending(secrets.token_bytes(16), key=f"k{i}") for i in range(5)] + [pending(secrets.token_bytes(16))]
    statements: list[str] = []

    def logged(record: asyncpg.connection.LoggedQuery) -> None:
        statements.append(record.query)

    async with database.pool.acquire() as conn:
        # A connection's first use of the statement also introspects its types.
        assert await repository._write_at_once(conn, [pending(secrets.token_bytes(16))]) is not None
        conn.add_query_logger(logged)
        try:
            receipts = await repository._write_at_once(conn, batch)
        finally:
            conn.remove_query_logger(logged)
    assert receipts == [item.candidate for item in batch]
    assert len(statements) == 1
    assert await counts(database, batch) == {"receipts": 7, "keys": 5, "records": 7, "documents": 6}
    async with database.pool.acquire() as conn:
        ids = [i.candidate.invoice_id for i in batch]
        stored = await conn.fetch("SELECT invoice_id, sha256, event_id FROM receipts WHERE invoice_id = ANY($1)", ids)
        announced = await conn.fetch(
            "SELECT key, value FROM outbox WHERE key = ANY($1::bytea[])", [i.encode() for i in ids]
        )
        bound = await conn.fetch("SELECT idempotency_key, invoice_id FROM idempotency_keys")
    assert {(str(r["invoice_id"]), r["sha256"], r["event_id"]) for r in stored} == {
        (i.candidate.invoice_id, i.submission.sha256, i.candidate.event_id) for i in batch
    }
    assert {(bytes(r["key"]).decode(), bytes(r["value"]).decode()) for r in announced} == {
        (i.candidate.invoice_id, i.candidate.event_id) for i in batch
    }
    assert {r["idempotency_key"]: str(r["invoice_id"]) for r in bound} == {
        i.submission.idempotency_key: i.candidate.invoice_id for i in batch[:5]
    }
    # Every document is whole: the archive reads it back, hash checked.
    for item in batch:
        assert await repository._archive.read(item.submission.sha256) == item.submission.document


@pytest.mark.parametrize("generic_plans", [False, True])
async def test_the_statement_is_planned_once_with_generic_plans(stack: Stack, generic_plans: bool) -> None:
    """Ingest's Database runs on generic plans (invoicing_ingest.bootstrap).
    Without them, PostgreSQL plans this statement again at each execution
    (it planned for as long as it executed); with them, once per connection."""
    async with scratch_database(
        stack.database_url, "ingest_plans", "invoicing_ingest", generic_plans=generic_plans
    ) as database:
        repository = ReceiptRepository(database, PostgresArchive(database))
        async with database.pool.acquire() as conn:
            for size in range(1, 9):
                batch = [pending(secrets.token_bytes(16), key=f"p{size}-{i}") for i in range(size)]
                assert await repository._write_at_once(conn, batch) == [item.candidate for item in batch]
            plans = await conn.fetchrow(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement = $1", _AT_ONCE
            )
    assert plans is not None
    if generic_plans:
        assert (plans["generic_plans"], plans["custom_plans"]) == (8, 0)
    else:
        # The first five executions are always planned afresh.
        assert plans["custom_plans"] >= 5


async def test_a_receipt_or_key_already_there_writes_nothing(store: tuple[ReceiptRepository, Database]) -> None:
    repository, database = store
    earlier = pending(secrets.token_bytes(16), key="k")
    new, other = pending(secrets.token_bytes(16)), pending(secrets.token_bytes(16), key="k")
    async with database.pool.acquire() as conn:
        assert await repository._write_at_once(conn, [earlier]) is not None
        # A new document with the same document again; then a new document
        # under a bound key.
        assert await repository._write_at_once(conn, [new, pending(earlier.submission.document)]) is None
        assert await repository._write_at_once(conn, [other]) is None
    # Only the first receipt, key and record; neither new document.
    assert await counts(database, [new, other]) == {"receipts": 1, "keys": 1, "records": 1, "documents": 0}


async def test_a_receipt_committed_meanwhile_undoes_the_whole_statement(
    store: tuple[ReceiptRepository, Database],
) -> None:
    repository, database = store
    raced, bystander = pending(secrets.token_bytes(16)), pending(secrets.token_bytes(16), key="b")
    other = await database.connect()
    transaction = other.transaction()
    await transaction.start()
    committed = False
    try:
        # Another writer's receipt for the same document, not committed yet:
        # the statement's snapshot does not see it, its insert waits on it.
        await other.execute(
            "INSERT INTO receipts (invoice_id, submitter, sha256, filename, size_bytes, received_at, event_id)"
            " VALUES ($1, 'erp', $2, 'f.xml', 1, now(), 'other')",
            new_receipt(datetime.now(UTC)).invoice_id,
            raced.submission.sha256,
        )
        async with database.pool.acquire() as conn:
            waiting_pid = conn.get_server_pid()
            task = asyncio.create_task(repository._write_at_once(conn, [bystander, raced]))
            deadline = asyncio.get_running_loop().time() + _WAIT_SECONDS
            while not await other.fetchval(
                "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", waiting_pid
            ):
                assert asyncio.get_running_loop().time() < deadline, "the statement never waited for the other writer"
                await other.fetchval("SELECT pg_sleep(0.01)")
            await transaction.commit()
            committed = True
            assert await task is None
    finally:
        if not committed:
            await transaction.rollback()
        await other.close()
    # Only the other writer's receipt: no bystander receipt, key, record or document.
    assert await counts(database, [bystander, raced]) == {"receipts": 1, "keys": 0, "records": 0, "documents": 0}
