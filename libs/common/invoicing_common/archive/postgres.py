"""The archive in PostgreSQL: schema ``archive``, documents and their chunks.

Writes join the caller's transaction, so that a receipt is committed with
its files or not at all. Reads check every chunk's hash before handing it
out, and the whole file's hash and size at the end.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from importlib.resources import files
from typing import Any, Final, Generic, TypeVar

import asyncpg  # type: ignore[import-untyped]
from mode import Service

from invoicing_common.archive.model import (
    CHUNK_BYTES,
    ChunkMissing,
    ChunkStore,
    DocumentDamaged,
    DocumentMissing,
    FileRef,
    split,
)
from invoicing_common.archive.settings import ArchiveSettings
from invoicing_common.db import Database, apply_migrations

Request = TypeVar("Request")
Result = TypeVar("Result")

SCHEMA: Final = "archive"
# French law keeps invoices ten years (Code de commerce L123-22).
DEFAULT_RETENTION: Final = timedelta(days=3653)
# A document referenced again has its retention extended; within a day of
# the stored date the row is left alone, so that retries rewrite nothing.
_EXTEND_SLACK: Final = "1 day"
# Chunks a reader fetches per query: a download holds a connection only
# for that long, however slowly its client reads.
_READ_BATCH: Final = 4


def _insert_documents_sql(when: str = "true") -> str:
    """New document rows ($1..$6, see _document_rows), only if ``when``;
    returns the inserted ones."""
    return (
        "INSERT INTO archive.documents (sha256, size_bytes, chunk_count, media_type, filename, retain_until)"
        " SELECT s, z, c, m, f, $6 FROM unnest($1::text[], $2::bigint[], $3::int[], $4::text[], $5::text[])"
        f" AS u (s, z, c, m, f) WHERE {when} ON CONFLICT (sha256) DO NOTHING RETURNING id, sha256"
    )


def _extend_sql(hashes: str, until: str, when: str = "true") -> str:
    """Extends the retention of the documents ``hashes`` (a text[]
    parameter) to ``until`` (a timestamptz one), only if ``when``."""
    return (
        f"UPDATE archive.documents SET retain_until = {until} WHERE sha256 = ANY({hashes}::text[])"
        f" AND retain_until < {until}::timestamptz - interval '{_EXTEND_SLACK}' AND {when}"
    )


def _renumber(sql: str, first: int) -> str:
    """``sql`` with its parameters $1, $2, ... numbered from ``$first``."""
    return re.sub(r"\$(\d+)", lambda m: f"${int(m.group(1)) + first - 1}", sql)


def _document_rows(unique: dict[str, tuple[FileRef, bytes]], order: list[str], until: datetime) -> tuple[Any, ...]:
    return (
        order,
        [len(unique[s][1]) for s in order],
        [-(-len(unique[s][1]) // CHUNK_BYTES) for s in order],
        [unique[s][0].media_type for s in order],
        [unique[s][0].filename for s in order],
        until,
    )


def open_archive(database: Database, settings: ArchiveSettings) -> tuple[PostgresArchive, list[Service]]:
    """The archive these settings describe, and the services to run with it
    (the object-store client, when the bytes go to S3)."""
    retention = timedelta(days=settings.archive_retention_days)
    if settings.archive_store == "postgres":
        return PostgresArchive(database, retention), []
    from invoicing_common.archive.objects import S3Chunks

    objects = S3Chunks(settings)
    return PostgresArchive(database, retention, objects=objects), [objects]


async def migrate(database: Database) -> list[str]:
    """Create or update the archive's tables (run by the service that owns
    them, ingest; others are granted rights on them, docs/archive.md)."""
    async with database.pool.acquire() as conn:
        return await apply_migrations(conn, SCHEMA, files("invoicing_common.archive") / "migrations")


class _Verifier:
    """Checks a stored file's chunks in order, as they are read."""

    def __init__(self, sha256: str, size_bytes: int, chunk_count: int) -> None:
        self.sha256 = sha256
        self._size = size_bytes
        self._count = chunk_count
        self._digest = hashlib.sha256()
        self._seen = 0
        self._next = 0

    def take(self, seq: int, chunk_sha256: bytes, data: bytes) -> bytes:
        if seq != self._next:
            raise DocumentDamaged(self.sha256, f"chunk {self._next} is missing")
        if hashlib.sha256(data).digest() != bytes(chunk_sha256):
            raise DocumentDamaged(self.sha256, f"chunk {seq} does not match its hash")
        self._next += 1
        self._seen += len(data)
        if self._seen > self._size:
            raise DocumentDamaged(self.sha256, f"more than the {self._size} bytes recorded")
        self._digest.update(data)
        return data

    def done(self) -> None:
        if self._next != self._count or self._seen != self._size:
            raise DocumentDamaged(
                self.sha256, f"{self._next} chunks, {self._seen} bytes; {self._count} and {self._size} recorded"
            )
        if self._digest.hexdigest() != self.sha256:
            raise DocumentDamaged(self.sha256, "its bytes do not hash to its address")


class PostgresArchive:
    def __init__(
        self,
        database: Database,
        retention: timedelta = DEFAULT_RETENTION,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        objects: ChunkStore | None = None,
    ) -> None:
        """``objects``: where chunk bytes go (None: in the chunk rows)."""
        self._database = database
        self._retention = retention
        self._clock = clock
        self._objects = objects

    async def _place(self, chunk_sha256: bytes, chunk: bytes) -> bytes | None:
        """What the chunk row holds: the bytes, or None once the object
        store has them (written before the row, so a committed row always
        has its object)."""
        if self._objects is None:
            return chunk
        await self._objects.put(chunk_sha256.hex(), chunk)
        return None

    async def _bytes(self, verifier: _Verifier, seq: int, chunk_sha256: bytes, data: bytes | None) -> bytes:
        if data is None:
            if self._objects is None:
                raise DocumentDamaged(verifier.sha256, f"chunk {seq} is in an object store this service does not use")
            try:
                data = await self._objects.get(bytes(chunk_sha256).hex())
            except ChunkMissing:
                raise DocumentDamaged(verifier.sha256, f"chunk {seq} is missing from the object store") from None
        return verifier.take(seq, chunk_sha256, data)

    @property
    def database(self) -> Database:
        return self._database

    def retain_until(self) -> datetime:
        return self._clock() + self._retention

    # --- writing (inside the caller's transaction) ---------------------------

    async def put_many(self, conn: asyncpg.Connection, items: Sequence[tuple[FileRef, bytes]]) -> None:
        """Store each file not stored yet; extend the retention of the rest.
        With the bytes in the rows, one statement writes the new documents
        and their chunks (atomic by itself, so a caller outside a
        transaction never leaves a document without its chunks)."""
        if not items:
            return
        if self._objects is not None:
            await self._put_many_objects(conn, {ref.sha256: (ref, data) for ref, data in items})
            return
        await conn.execute(f"WITH {self.put_sql(1)} SELECT 1", *self.put_args(items))

    @property
    def in_database(self) -> bool:
        """The bytes are in PostgreSQL: ``put_sql`` can store them."""
        return self._objects is None

    @staticmethod
    def put_sql(first: int, when: str = "true") -> str:
        """``put_many`` as common table expressions (``archive_new``,
        ``archive_chunks``, ``archive_kept``), their parameters ``put_args``
        numbered from ``$first``: for a writer that stores documents in a
        statement of its own, which writes them only if ``when`` (an SQL
        condition without parameters). Only when ``in_database``."""
        return _renumber(
            f"archive_new AS ({_insert_documents_sql(when)}),"
            " archive_chunks AS (INSERT INTO archive.chunks (document_id, seq, sha256, data)"
            " SELECT archive_new.id, k.seq, k.h, k.d FROM archive_new"
            " JOIN unnest($7::text[], $8::int[], $9::bytea[], $10::bytea[]) AS k (owner, seq, h, d)"
            " ON k.owner = archive_new.sha256),"
            # The statement's snapshot does not hold archive_new's rows: only
            # documents stored before have their retention extended.
            f" archive_kept AS ({_extend_sql('$1', '$6', when)})",
            first,
        )

    def put_args(self, items: Sequence[tuple[FileRef, bytes]]) -> list[Any]:
        """The parameters of ``put_sql`` for ``items`` (none: no-ops)."""
        unique = {ref.sha256: (ref, data) for ref, data in items}
        # In hash order: two writers lock shared rows in the same order.
        order = sorted(unique)
        owners: list[str] = []
        seqs: list[int] = []
        hashes: list[bytes] = []
        chunks: list[bytes] = []
        for sha256 in order:
            for seq, chunk in enumerate(split(unique[sha256][1])):
                owners.append(sha256)
                seqs.append(seq)
                hashes.append(hashlib.sha256(chunk).digest())
                chunks.append(chunk)
        return [*_document_rows(unique, order, self.retain_until()), owners, seqs, hashes, chunks]

    async def store(self, items: Sequence[tuple[FileRef, bytes]]) -> None:
        """put_many on a connection of its own, committed when it returns."""
        async with self._database.pool.acquire() as conn:
            if self._objects is None:
                # One statement: atomic without a transaction around it.
                await self.put_many(conn, items)
                return
            async with conn.transaction():
                await self.put_many(conn, items)

    async def _put_many_objects(self, conn: asyncpg.Connection, unique: dict[str, tuple[FileRef, bytes]]) -> None:
        """put_many with the bytes in the object store: only the chunks of
        documents this call inserts are written there, before their rows."""
        order = sorted(unique)
        until = self.retain_until()
        inserted = await conn.fetch(_insert_documents_sql(), *_document_rows(unique, order, until))
        new = {row["sha256"]: row["id"] for row in inserted}
        if len(new) < len(order):
            await self._extend(conn, [s for s in order if s not in new], until)
        ids: list[int] = []
        seqs: list[int] = []
        hashes: list[bytes] = []
        chunks: list[bytes] = []
        for sha256, document_id in new.items():
            for seq, chunk in enumerate(split(unique[sha256][1])):
                ids.append(document_id)
                seqs.append(seq)
                hashes.append(hashlib.sha256(chunk).digest())
                chunks.append(chunk)
        # Object-store writes go together: a batch waits for the slowest
        # one, not for their sum.
        stored = await asyncio.gather(*(self._place(h, c) for h, c in zip(hashes, chunks, strict=True)))
        if ids:
            await conn.execute(
                "INSERT INTO archive.chunks (document_id, seq, sha256, data)"
                " SELECT * FROM unnest($1::bigint[], $2::int[], $3::bytea[], $4::bytea[])",
                ids,
                seqs,
                hashes,
                list(stored),
            )

    async def _extend(self, conn: asyncpg.Connection, hashes: list[str], until: datetime) -> None:
        await conn.execute(_extend_sql("$1", "$2"), hashes, until)

    def upload(self, conn: asyncpg.Connection) -> Upload:
        """A file written as its bytes arrive (see Upload)."""
        return Upload(self, conn)

    # --- reading ---------------------------------------------------------------

    async def _header(self, conn: asyncpg.Connection, sha256: str) -> tuple[int, _Verifier]:
        row = await conn.fetchrow("SELECT id, size_bytes, chunk_count FROM archive.documents WHERE sha256 = $1", sha256)
        if row is None:
            raise DocumentMissing(sha256)
        return row["id"], _Verifier(sha256, row["size_bytes"], row["chunk_count"])

    async def read(self, sha256: str) -> bytes:
        """The whole file, checked (for files that fit in memory anyway:
        the invoice validate reads)."""
        async with self._database.pool.acquire() as conn:
            document_id, verifier = await self._header(conn, sha256)
            rows = await conn.fetch(
                "SELECT seq, sha256, data FROM archive.chunks WHERE document_id = $1 ORDER BY seq", document_id
            )
        parts = [await self._bytes(verifier, row["seq"], row["sha256"], row["data"]) for row in rows]
        verifier.done()
        return b"".join(parts)

    async def read_many(self, hashes: Sequence[str]) -> dict[str, bytes | Exception]:
        """Several whole files in one query, each checked; a file that
        cannot be served maps to its DocumentMissing or DocumentDamaged."""
        async with self._database.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT d.sha256 AS document, d.size_bytes, d.chunk_count, c.seq, c.sha256, c.data"
                " FROM archive.documents d LEFT JOIN archive.chunks c ON c.document_id = d.id"
                " WHERE d.sha256 = ANY($1::text[]) ORDER BY d.sha256, c.seq",
                list(set(hashes)),
            )
        found: dict[str, tuple[_Verifier, list[bytes]]] = {}
        results: dict[str, bytes | Exception] = {}
        for row in rows:
            document = row["document"]
            if document not in found:
                found[document] = (_Verifier(document, row["size_bytes"], row["chunk_count"]), [])
            if document in results or row["seq"] is None:
                continue  # already damaged, or a file without chunks
            verifier, parts = found[document]
            try:
                parts.append(await self._bytes(verifier, row["seq"], row["sha256"], row["data"]))
            except DocumentDamaged as exc:
                results[document] = exc
        for document, (verifier, parts) in found.items():
            if document in results:
                continue
            try:
                verifier.done()
                results[document] = b"".join(parts)
            except DocumentDamaged as exc:
                results[document] = exc
        for document in hashes:
            results.setdefault(document, DocumentMissing(document))
        return results

    async def stream(self, sha256: str) -> AsyncIterator[bytes]:
        """The file's chunks in order, each checked before it is yielded.
        Raises DocumentDamaged at the first chunk that fails, or at the end
        if the whole does not hash to ``sha256``: a consumer must discard
        what it got before the error."""
        async with self._database.pool.acquire() as conn:
            document_id, verifier = await self._header(conn, sha256)
        seq = 0
        while True:
            async with self._database.pool.acquire() as conn:
                rows = await conn.fetch(
                    "SELECT seq, sha256, data FROM archive.chunks WHERE document_id = $1 AND seq >= $2"
                    " ORDER BY seq LIMIT $3",
                    document_id,
                    seq,
                    _READ_BATCH,
                )
            for row in rows:
                yield await self._bytes(verifier, row["seq"], row["sha256"], row["data"])
            if len(rows) < _READ_BATCH:
                break
            seq = rows[-1]["seq"] + 1
        verifier.done()


class Upload:
    """One file written chunk by chunk inside the caller's transaction,
    hashed as it goes, with at most one chunk held in memory. Its rows sit
    under a savepoint: when the file turns out to be stored already, they
    are rolled back and the stored one is kept. If the caller's transaction
    does not commit, nothing of the file remains."""

    def __init__(self, archive: PostgresArchive, conn: asyncpg.Connection) -> None:
        self._archive = archive
        self._conn = conn
        self._digest = hashlib.sha256()
        self._size = 0
        self._seq = 0
        self._buffer = bytearray()
        self._savepoint: Any = None
        self._document_id: int | None = None

    @property
    def size(self) -> int:
        return self._size

    async def write(self, data: bytes) -> None:
        self._digest.update(data)
        self._size += len(data)
        self._buffer += data
        while len(self._buffer) >= CHUNK_BYTES:
            chunk = bytes(self._buffer[:CHUNK_BYTES])
            del self._buffer[:CHUNK_BYTES]
            await self._store(chunk)

    async def _store(self, chunk: bytes) -> None:
        if self._savepoint is None:
            self._savepoint = self._conn.transaction()
            await self._savepoint.start()
            self._document_id = await self._conn.fetchval(
                "SELECT nextval(pg_get_serial_sequence('archive.documents', 'id'))"
            )
        digest = hashlib.sha256(chunk).digest()
        await self._conn.execute(
            "INSERT INTO archive.chunks (document_id, seq, sha256, data) VALUES ($1, $2, $3, $4)",
            self._document_id,
            self._seq,
            digest,
            await self._archive._place(digest, chunk),
        )
        self._seq += 1

    def sha256(self) -> str:
        return self._digest.hexdigest()

    async def finish(self, media_type: str, filename: str, origin: int) -> FileRef:
        """Keep the file (or the copy stored before) and return its reference."""
        if self._buffer:
            await self._store(bytes(self._buffer))
            self._buffer.clear()
        sha256 = self.sha256()
        until = self._archive.retain_until()
        if self._savepoint is None:
            # An empty file has no chunk and no savepoint yet.
            self._savepoint = self._conn.transaction()
            await self._savepoint.start()
            self._document_id = await self._conn.fetchval(
                "SELECT nextval(pg_get_serial_sequence('archive.documents', 'id'))"
            )
        stored_before = await self._conn.fetchval("SELECT 1 FROM archive.documents WHERE sha256 = $1", sha256)
        if stored_before is None:
            try:
                await self._conn.execute(
                    "INSERT INTO archive.documents"
                    " (id, sha256, size_bytes, chunk_count, media_type, filename, retain_until)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    self._document_id,
                    sha256,
                    self._size,
                    self._seq,
                    media_type,
                    filename,
                    until,
                )
            except asyncpg.UniqueViolationError:
                stored_before = 1  # another upload of the same bytes committed first
        if stored_before is None:
            await self._savepoint.commit()
        else:
            await self._savepoint.rollback()
            await self._archive._extend(self._conn, [sha256], until)
        return FileRef(sha256, self._size, media_type, filename, origin)


class _Coalescer(Generic[Request, Result]):
    """Calls from many concurrent callers, run together: the requests that
    arrive while a call runs share the next one (one round trip for a batch
    under load, one per request when quiet)."""

    def __init__(
        self, run_many: Callable[[list[Request]], Awaitable[list[Result | Exception]]], max_batch: int
    ) -> None:
        self._run_many = run_many
        self._max_batch = max_batch
        self._pending: list[tuple[Request, asyncio.Future[Result]]] = []
        self._runner: asyncio.Task[None] | None = None

    async def submit(self, request: Request) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((request, future))
        if self._runner is None or self._runner.done():
            # A fresh context: the batch's spans must not join the trace of
            # whichever caller happened to start it.
            self._runner = asyncio.get_running_loop().create_task(
                self._run_pending(), name="archive batch", context=contextvars.Context()
            )
        return await future

    async def _run_pending(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
            try:
                results: list[Result | Exception] = await self._run_many([request for request, _ in batch])
            except Exception as exc:  # noqa: BLE001 - every caller of the batch gets the failure
                results = [exc] * len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():  # its caller gave up
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)


class CoalescingArchive:
    """Reads and writes of the records a stream handler has in flight,
    grouped: whole files read with one query, files stored with one
    statement."""

    def __init__(self, archive: PostgresArchive, max_batch: int = 64) -> None:
        self._archive = archive
        self._reads: _Coalescer[str, bytes] = _Coalescer(self._read_many, max_batch)
        self._writes: _Coalescer[Sequence[tuple[FileRef, bytes]], None] = _Coalescer(self._store_many, max_batch)

    async def read(self, sha256: str) -> bytes:
        return await self._reads.submit(sha256)

    async def store(self, items: Sequence[tuple[FileRef, bytes]]) -> None:
        await self._writes.submit(items)

    async def _read_many(self, hashes: list[str]) -> list[bytes | Exception]:
        results = await self._archive.read_many(hashes)
        return [results[sha256] for sha256 in hashes]

    async def _store_many(self, requests: list[Sequence[tuple[FileRef, bytes]]]) -> list[Exception | None]:
        await self._archive.store([item for items in requests for item in items])
        return [None] * len(requests)
