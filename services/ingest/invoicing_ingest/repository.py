"""Receipts in PostgreSQL (schema ``ingest``), written by group commit.

A receipt and its ``received`` record (an outbox row, published by the
relay) are committed in one transaction: the answer "accepted" means both
are durable, and no transaction waits for Kafka. One transaction per
submission cost three round trips (BEGIN, INSERT, COMMIT) and a commit per
invoice. Instead, the submissions that arrive while a transaction is busy
wait for the next one, and share it: one set-based INSERT for their
receipts, one for their outbox rows, one COMMIT. Under no load a batch is
one submission, so nothing waits longer than before. When none of a
batch's receipts or keys exist yet (the common case), all of it is one
statement, committed by itself: one round trip instead of six.

What each submission sees is unchanged: its receipt (new, or the one it
duplicates) once committed. Anything unusual in a batch (an idempotency
key that conflicts, a statement that fails for one submission's data)
sends the batch back to the one-transaction-per-submission path, which
decides each submission as if they had come in turn.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Final

import asyncpg  # type: ignore[import-untyped]
from opentelemetry import propagate
from opentelemetry.trace import Link, Span

from invoicing_common.archive.postgres import PostgresArchive
from invoicing_common.db import Database
from invoicing_common.kafka import outbox
from invoicing_common.telemetry import RECEIPT_BATCH_SIZE, tracer
from invoicing_ingest.domain import Receipt, Submission

log = logging.getLogger(__name__)

# Enough to cover every submission in flight at the bench's concurrency.
DEFAULT_MAX_BATCH: Final = 64

OUTBOX = outbox.OutboxTable(source="ingest", channel="ingest_outbox")

# _write_at_once's statement: $1-$8 the submissions, $9-$12 their outbox
# rows, $13-$14 the notification, $15-$24 the documents (PostgresArchive).
# Receipts and keys are inserted without ON CONFLICT: a row committed since
# the snapshot fails the statement, and with it everything it wrote. When a
# receipt or key exists already, nothing is written.
_AT_ONCE: Final = (
    "WITH i AS (SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int[],"
    " $6::timestamptz[], $7::text[], $8::text[])"
    " AS u (invoice_id, submitter, sha256, filename, size_bytes, received_at, event_id, idempotency_key)),"
    " seen AS (SELECT EXISTS (SELECT 1 FROM receipts JOIN i USING (submitter, sha256))"
    " OR EXISTS (SELECT 1 FROM idempotency_keys JOIN i USING (submitter, idempotency_key)) AS found),"
    " fresh AS (SELECT i.* FROM i, seen WHERE NOT seen.found),"
    " receipts_added AS (INSERT INTO receipts"
    " (invoice_id, submitter, sha256, filename, size_bytes, received_at, event_id)"
    " SELECT invoice_id, submitter, sha256, filename, size_bytes, received_at, event_id FROM fresh),"
    " keys_added AS (INSERT INTO idempotency_keys (submitter, idempotency_key, invoice_id)"
    " SELECT submitter, idempotency_key, invoice_id FROM fresh WHERE idempotency_key IS NOT NULL),"
    f" outbox_added AS ({outbox.insert_sql(OUTBOX, 9)} WHERE NOT (SELECT found FROM seen)),"
    f" {PostgresArchive.put_sql(15, when='NOT (SELECT found FROM seen)')}"
    " SELECT found, (SELECT pg_notify($13, $14) WHERE NOT found) FROM seen"
)

# Builds the record a new receipt announces.
Announce = Callable[[Receipt], outbox.OutboxMessage]


class ConflictingRetry(Exception):
    """An idempotency key reused for a different document."""

    def __init__(self, invoice_id: str) -> None:
        super().__init__(invoice_id)
        self.invoice_id = invoice_id


class _OneByOne(Exception):
    """The batch needs per-submission decisions (a key conflict)."""


def _receipt_vanished() -> asyncpg.exceptions.SerializationError:
    # Transient: the caller answers UNAVAILABLE and the client retries.
    return asyncpg.exceptions.SerializationError("receipt vanished; retry")


def _future() -> asyncio.Future[Any]:
    return asyncio.get_running_loop().create_future()


def _settle(future: asyncio.Future[Any], value: object) -> None:
    if not future.done():
        future.set_result(value)


@dataclass(eq=False)
class _Pending:
    """One submission's place in a batch. The future carries a value, not
    an exception: a submitter that gave up leaves nothing unretrieved."""

    submission: Submission
    candidate: Receipt
    announce: Announce
    span: Span
    # The trace context of "store receipt": the relay's send continues it.
    carrier: dict[str, str] = field(default_factory=dict)
    # The committed receipt, or the exception to raise instead.
    resolved: asyncio.Future[Receipt | BaseException] = field(default_factory=_future)
    # The submitter gave up before its batch formed: it takes no part.
    abandoned: bool = False

    def message(self, receipt: Receipt) -> outbox.OutboxMessage:
        return replace(self.announce(receipt), carrier=self.carrier)


class ReceiptRepository:
    def __init__(
        self,
        database: Database,
        archive: PostgresArchive,
        max_batch: int = DEFAULT_MAX_BATCH,
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        # The pool exists only once the Database service has started.
        self._database = database
        self._archive = archive
        self._max_batch = max_batch
        # Wakes this process's outbox relay (NOTIFY wakes the leader anywhere).
        self._on_commit = on_commit or (lambda: None)
        # Then the relay in this process needs no notification from us.
        self._wakes_relay = on_commit is not None
        self._queue: list[_Pending] = []
        self._writer: asyncio.Task[None] | None = None
        self.batches = 0

    @property
    def queued(self) -> int:
        """Submissions waiting for the next batch."""
        return len(self._queue)

    async def store(self, submission: Submission, candidate: Receipt, announce: Announce) -> Receipt:
        """The committed receipt that answers ``submission``: ``candidate``
        with the record ``announce`` makes of it, or the receipt of the same
        document stored before (``duplicate``). Raises ConflictingRetry for
        an idempotency key already bound to another document."""
        with tracer().start_as_current_span("store receipt") as span:
            span.set_attribute("db.system.name", "postgresql")
            item = _Pending(submission, candidate, announce, span)
            propagate.inject(item.carrier)
            self._queue.append(item)
            self._wake_writer()
            try:
                # Shielded: a submitter that gives up does not cancel the batch.
                resolved = await asyncio.shield(item.resolved)
            except asyncio.CancelledError:
                # Still queued: nothing is written. Already in a batch: it is
                # stored, and a retry with the same key gets its receipt.
                item.abandoned = True
                raise
            if isinstance(resolved, BaseException):
                raise resolved
            return resolved

    async def store_in(
        self, conn: asyncpg.Connection, submission: Submission, candidate: Receipt, announce: Announce
    ) -> Receipt:
        """``store`` inside the caller's transaction, for a streamed upload
        whose files that transaction already holds: the receipt and its
        record commit with them, or nothing does."""
        with tracer().start_as_current_span("store receipt") as span:
            span.set_attribute("db.system.name", "postgresql")
            item = _Pending(submission, candidate, announce, span)
            propagate.inject(item.carrier)
            resolved = await self._write_one(conn, item)
            if isinstance(resolved, BaseException):
                raise resolved
            return resolved

    def committed(self) -> None:
        """The caller's transaction holding a receipt has committed."""
        self._on_commit()

    def _wake_writer(self) -> None:
        if self._writer is None or self._writer.done():
            # A fresh context: the writer's spans must not join the trace of
            # whichever submission happened to start it.
            self._writer = asyncio.get_running_loop().create_task(
                self._write_queue(), name="receipt writer", context=contextvars.Context()
            )

    async def _write_queue(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
            batch = [item for item in batch if not item.abandoned]
            if batch:
                await self._write(batch)

    async def _write(self, batch: list[_Pending]) -> None:
        links = [Link(item.span.get_span_context()) for item in batch]
        with tracer().start_as_current_span("store receipts", links=links) as span:
            span.set_attribute("invoicing.batch.size", len(batch))
            RECEIPT_BATCH_SIZE.record(len(batch))
            self.batches += 1
            try:
                try:
                    async with self._database.pool.acquire() as conn:
                        receipts = await self._write_at_once(conn, batch)
                        if receipts is None:
                            receipts = await self._write_batch(conn, batch)
                    self._on_commit()
                    for item, receipt in zip(batch, receipts, strict=True):
                        _settle(item.resolved, receipt)
                    return
                except (_OneByOne, asyncpg.PostgresError) as exc:
                    # A key conflict, or a statement that failed for one
                    # submission's data: decide each one in turn, so only
                    # the submission at fault is refused. (Had the batch
                    # committed after all, each finds its receipt again.)
                    span.set_attribute("invoicing.batch.one_by_one", type(exc).__name__)
                for item in batch:
                    try:
                        async with self._database.pool.acquire() as conn:
                            _settle(item.resolved, await self._write_one(conn, item))
                        self._on_commit()
                    except Exception as exc:  # noqa: BLE001 - reported to this submission only
                        _settle(item.resolved, exc)
            except BaseException as exc:
                for item in batch:
                    _settle(item.resolved, exc)
                if not isinstance(exc, Exception):
                    raise
                log.warning("receipt batch of %d not stored: %s", len(batch), exc)

    async def _write_at_once(self, conn: asyncpg.Connection, batch: list[_Pending]) -> list[Receipt] | None:
        """The common case in one statement, its own transaction: when none
        of the batch's receipts or keys exist, its documents, receipts, keys
        and outbox rows, and the relay's notification. None: something
        existed, or a concurrent writer got there first; nothing was
        written, and ``_write_batch`` decides. One round trip instead of six
        under no load."""
        if not self._archive.in_database:
            return None
        items = sorted(batch, key=lambda item: (item.submission.submitter, item.submission.sha256))
        submissions = [item.submission for item in items]
        try:
            found = await conn.fetchval(
                _AT_ONCE,
                [item.candidate.invoice_id for item in items],
                [s.submitter for s in submissions],
                [s.sha256 for s in submissions],
                [s.filename for s in submissions],
                [s.original.size_bytes for s in submissions],
                [item.candidate.received_at for item in items],
                [item.candidate.event_id for item in items],
                [s.idempotency_key for s in submissions],
                *outbox.insert_args([item.message(item.candidate) for item in items]),
                *outbox.notify_args(OUTBOX, self._wakes_relay),
                *self._archive.put_args([(s.original, s.document) for s in submissions if s.document]),
            )
        except asyncpg.PostgresError:
            # A receipt or key committed by another writer since the
            # statement's snapshot (unique violation), or a deadlock with
            # it: the statement wrote nothing.
            return None
        if found:
            return None
        return [item.candidate for item in batch]

    async def _write_batch(self, conn: asyncpg.Connection, batch: list[_Pending]) -> list[Receipt]:
        async with conn.transaction():
            await self._archive_documents(conn, [item.submission for item in batch])
            receipts = await self._insert_all(conn, [item.submission for item in batch], [i.candidate for i in batch])
            if await self._bind_keys(conn, [item.submission for item in batch], receipts):
                raise _OneByOne
            # Only receipts this batch inserted are announced; a duplicate's
            # record went out with its first receipt.
            await outbox.insert(
                conn,
                OUTBOX,
                [item.message(r) for item, r in zip(batch, receipts, strict=True) if not r.duplicate],
                wakes_relay=self._wakes_relay,
            )
        return receipts

    async def _archive_documents(self, conn: asyncpg.Connection, submissions: list[Submission]) -> None:
        # Before the receipts: a receipt never commits without its document.
        # (A duplicate's document is stored already; storing it again only
        # extends its retention.) Streamed uploads archived theirs as they came.
        await self._archive.put_many(conn, [(s.original, s.document) for s in submissions if s.document])

    async def _insert_all(
        self, conn: asyncpg.Connection, submissions: list[Submission], candidates: list[Receipt]
    ) -> list[Receipt]:
        # Rows are written in (submitter, sha256) order, so two instances'
        # batches lock shared rows in the same order and cannot deadlock.
        order = sorted(range(len(submissions)), key=lambda i: (submissions[i].submitter, submissions[i].sha256))
        inserted = {
            str(row["invoice_id"])
            for row in await conn.fetch(
                "INSERT INTO receipts (invoice_id, submitter, sha256, filename, size_bytes, received_at, event_id)"
                " SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int[],"
                " $6::timestamptz[], $7::text[])"
                " ON CONFLICT (submitter, sha256) DO NOTHING RETURNING invoice_id",
                [candidates[i].invoice_id for i in order],
                [submissions[i].submitter for i in order],
                [submissions[i].sha256 for i in order],
                [submissions[i].filename for i in order],
                [submissions[i].original.size_bytes for i in order],
                [candidates[i].received_at for i in order],
                [candidates[i].event_id for i in order],
            )
        }
        missing = [i for i, c in enumerate(candidates) if c.invoice_id not in inserted]
        existing: dict[tuple[str, str], Receipt] = {}
        if missing:
            rows = await conn.fetch(
                "SELECT r.submitter, r.sha256, r.invoice_id, r.received_at, r.event_id FROM receipts r"
                " JOIN unnest($1::text[], $2::text[]) AS k (submitter, sha256) USING (submitter, sha256)",
                [submissions[i].submitter for i in missing],
                [submissions[i].sha256 for i in missing],
            )
            existing = {
                (row["submitter"], row["sha256"]): Receipt(
                    invoice_id=str(row["invoice_id"]),
                    received_at=row["received_at"],
                    duplicate=True,
                    event_id=row["event_id"],
                )
                for row in rows
            }
        receipts: list[Receipt] = []
        for submission, candidate in zip(submissions, candidates, strict=True):
            if candidate.invoice_id in inserted:
                receipts.append(candidate)
                continue
            receipt = existing.get((submission.submitter, submission.sha256))
            if receipt is None:
                # The conflicting row was rolled back between our insert and read.
                raise _receipt_vanished()
            receipts.append(receipt)
        return receipts

    async def _bind_keys(
        self, conn: asyncpg.Connection, submissions: list[Submission], receipts: list[Receipt]
    ) -> list[str]:
        """Bind each idempotency key to its receipt; returns the invoices
        that keys already answer for another receipt (conflicts)."""
        keyed = sorted(
            ((s.submitter, s.idempotency_key, r.invoice_id) for s, r in zip(submissions, receipts, strict=True)
             if s.idempotency_key is not None),
        )  # fmt: skip
        if not keyed:
            return []
        owners = _key_owners(
            await conn.fetch(
                "INSERT INTO idempotency_keys (submitter, idempotency_key, invoice_id)"
                " SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[]) ON CONFLICT DO NOTHING"
                " RETURNING submitter, idempotency_key, invoice_id",
                [k[0] for k in keyed],
                [k[1] for k in keyed],
                [k[2] for k in keyed],
            )
        )
        # Only keys bound before (a retry, or another submission's) are read
        # back: the common case costs one round trip.
        taken = sorted({(submitter, key) for submitter, key, _ in keyed if (submitter, key) not in owners})
        if taken:
            owners.update(
                _key_owners(
                    await conn.fetch(
                        "SELECT k.submitter, k.idempotency_key, k.invoice_id FROM idempotency_keys k"
                        " JOIN unnest($1::text[], $2::text[]) AS u (submitter, idempotency_key)"
                        " USING (submitter, idempotency_key)",
                        [t[0] for t in taken],
                        [t[1] for t in taken],
                    )
                )
            )
        if len(owners) != len({(submitter, key) for submitter, key, _ in keyed}):
            raise _receipt_vanished()  # a key row rolled back between our insert and read
        return [owners[submitter, key] for submitter, key, invoice_id in keyed if owners[submitter, key] != invoice_id]

    async def _write_one(self, conn: asyncpg.Connection, item: _Pending) -> Receipt | BaseException:
        """One submission, one transaction: decides a key conflict for the
        submission it belongs to, as if the submissions had come in turn."""
        try:
            async with conn.transaction():
                await self._archive_documents(conn, [item.submission])
                receipts = await self._insert_all(conn, [item.submission], [item.candidate])
                conflicts = await self._bind_keys(conn, [item.submission], receipts)
                if conflicts:
                    raise ConflictingRetry(conflicts[0])
                if not receipts[0].duplicate:
                    await outbox.insert(conn, OUTBOX, [item.message(receipts[0])], wakes_relay=self._wakes_relay)
        except ConflictingRetry as exc:
            return exc
        return receipts[0]


def _key_owners(rows: list[asyncpg.Record]) -> dict[tuple[str, str], str]:
    """{(submitter, idempotency key): invoice id} of idempotency_keys rows."""
    return {(row["submitter"], row["idempotency_key"]): str(row["invoice_id"]) for row in rows}
