"""Receipts in PostgreSQL (schema ``ingest``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg  # type: ignore[import-untyped]

from invoicing_common.db import Database
from invoicing_ingest.domain import Receipt, Submission


class ConflictingRetry(Exception):
    """An idempotency key reused for a different document."""

    def __init__(self, invoice_id: str) -> None:
        super().__init__(invoice_id)
        self.invoice_id = invoice_id


class ReceiptRepository:
    def __init__(self, database: Database) -> None:
        # The pool exists only once the Database service has started.
        self._database = database

    @asynccontextmanager
    async def reserve(self, submission: Submission, candidate: Receipt) -> AsyncIterator[Receipt]:
        """Yield the receipt that answers ``submission``.

        For a new submission the receipt row is inserted and committed only if
        the body of the ``async with`` completes (the event is durable in
        Kafka); on failure it is rolled back so a retry starts afresh. A
        concurrent retry of the same submission waits on the row lock and then
        sees the committed receipt as a duplicate.
        """
        async with self._database.pool.acquire() as conn, conn.transaction():
            inserted = await conn.fetchval(
                "INSERT INTO receipts (invoice_id, submitter, sha256, filename, size_bytes, received_at, event_id)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (submitter, sha256) DO NOTHING RETURNING invoice_id",
                candidate.invoice_id,
                submission.submitter,
                submission.sha256,
                submission.filename,
                len(submission.document),
                candidate.received_at,
                candidate.event_id,
            )
            receipt = candidate if inserted is not None else await self._by_content(conn, submission)
            if submission.idempotency_key is not None:
                await self._bind_key(conn, submission, receipt)
            yield receipt

    async def _by_content(self, conn: asyncpg.Connection, submission: Submission) -> Receipt:
        row = await conn.fetchrow(
            "SELECT invoice_id, received_at, event_id FROM receipts WHERE submitter = $1 AND sha256 = $2",
            submission.submitter,
            submission.sha256,
        )
        if row is None:
            # The conflicting row was rolled back between our insert and read.
            raise asyncpg.exceptions.SerializationError("receipt vanished; retry")
        return Receipt(
            invoice_id=str(row["invoice_id"]), received_at=row["received_at"], duplicate=True, event_id=row["event_id"]
        )

    async def _bind_key(self, conn: asyncpg.Connection, submission: Submission, receipt: Receipt) -> None:
        bound = await conn.fetchval(
            "INSERT INTO idempotency_keys (submitter, idempotency_key, invoice_id) VALUES ($1, $2, $3)"
            " ON CONFLICT DO NOTHING RETURNING invoice_id",
            submission.submitter,
            submission.idempotency_key,
            receipt.invoice_id,
        )
        if bound is not None:
            return
        owner = await conn.fetchval(
            "SELECT invoice_id FROM idempotency_keys WHERE submitter = $1 AND idempotency_key = $2",
            submission.submitter,
            submission.idempotency_key,
        )
        if str(owner) != receipt.invoice_id:
            raise ConflictingRetry(str(owner))
