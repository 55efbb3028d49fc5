"""The document archive in the stack's PostgreSQL (schema ``archive``, as
ingest migrated it): files stored once by hash, streamed uploads that keep
nothing unless their transaction commits, reads that refuse damaged bytes,
and rows that the services' own roles can neither change nor delete."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg  # type: ignore[import-untyped]
import pytest

from invoicing_common.archive import ORIGIN_INVOICE, ORIGIN_SUBMITTED, DocumentDamaged, DocumentMissing, file_ref
from invoicing_common.archive.model import CHUNK_BYTES
from invoicing_common.archive.postgres import CoalescingArchive, PostgresArchive
from invoicing_common.db import Database
from tests.support import Stack, tamper_with_chunks

pytestmark = pytest.mark.stack


@pytest.fixture
async def archive(stack: Stack) -> AsyncIterator[PostgresArchive]:
    database = Database(stack.database_url, schema="public")
    await database.start()
    try:
        yield PostgresArchive(database)
    finally:
        await database.stop()


async def _stored_rows(archive: PostgresArchive, sha256: str) -> tuple[int, int]:
    async with archive.database.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT count(DISTINCT d.id) AS documents, count(c.seq) AS chunks FROM archive.documents d"
            " LEFT JOIN archive.chunks c ON c.document_id = d.id WHERE d.sha256 = $1",
            sha256,
        )
    return row["documents"], row["chunks"]


async def test_a_file_is_stored_once_in_chunks_and_read_back_whole(archive: PostgresArchive) -> None:
    data = os.urandom(2 * CHUNK_BYTES + 12345)
    ref = file_ref(data, "application/pdf", "big.pdf", ORIGIN_SUBMITTED)
    for _ in range(2):  # the second store finds it there
        async with archive.database.pool.acquire() as conn, conn.transaction():
            await archive.put_many(conn, [(ref, data), (ref, data)])
    assert await _stored_rows(archive, ref.sha256) == (1, 3)
    assert await archive.read(ref.sha256) == data
    assert b"".join([chunk async for chunk in archive.stream(ref.sha256)]) == data


async def test_storing_known_bytes_again_extends_their_retention(archive: PostgresArchive) -> None:
    data = os.urandom(1000)
    ref = file_ref(data, "application/xml", "a.xml", ORIGIN_INVOICE)
    soon = PostgresArchive(archive.database, timedelta(days=30))
    async with archive.database.pool.acquire() as conn, conn.transaction():
        await soon.put_many(conn, [(ref, data)])
    async with archive.database.pool.acquire() as conn, conn.transaction():
        await archive.put_many(conn, [(ref, data)])
        # A shorter retention asked later never shortens it.
        await soon.put_many(conn, [(ref, data)])
    async with archive.database.pool.acquire() as conn:
        until = await conn.fetchval("SELECT retain_until FROM archive.documents WHERE sha256 = $1", ref.sha256)
    assert until > datetime.now(UTC) + timedelta(days=3600)


async def test_an_upload_keeps_nothing_unless_its_transaction_commits(archive: PostgresArchive) -> None:
    data = os.urandom(CHUNK_BYTES + 777)
    sha256 = hashlib.sha256(data).hexdigest()
    async with archive.database.pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        upload = archive.upload(conn)
        for start in range(0, len(data), 100_000):  # pieces of any size
            await upload.write(data[start : start + 100_000])
        ref = await upload.finish("application/pdf", "x.pdf", ORIGIN_SUBMITTED)
        assert (ref.sha256, ref.size_bytes) == (sha256, len(data))
        await transaction.rollback()
    assert await _stored_rows(archive, sha256) == (0, 0)
    with pytest.raises(DocumentMissing):
        await archive.read(sha256)

    async with archive.database.pool.acquire() as conn, conn.transaction():
        upload = archive.upload(conn)
        await upload.write(data)
        await upload.finish("application/pdf", "x.pdf", ORIGIN_SUBMITTED)
    assert await archive.read(sha256) == data
    # The same bytes uploaded again: the new rows go, the stored file stays.
    async with archive.database.pool.acquire() as conn, conn.transaction():
        upload = archive.upload(conn)
        await upload.write(data)
        again = await upload.finish("application/pdf", "renamed.pdf", ORIGIN_SUBMITTED)
    assert again.sha256 == sha256 and again.filename == "renamed.pdf"
    assert await _stored_rows(archive, sha256) == (1, 2)


async def test_a_damaged_chunk_is_refused_and_never_served(stack: Stack, archive: PostgresArchive) -> None:
    data = os.urandom(3 * CHUNK_BYTES)
    ref = file_ref(data, "application/pdf", "d.pdf", ORIGIN_SUBMITTED)
    async with archive.database.pool.acquire() as conn, conn.transaction():
        await archive.put_many(conn, [(ref, data)])
    damage = "overlay(data PLACING '\\x00ff'::bytea FROM 10)"
    await tamper_with_chunks(stack.database_url, ref.sha256, damage, "seq = 1")
    with pytest.raises(DocumentDamaged, match="chunk 1 does not match its hash"):
        await archive.read(ref.sha256)
    served: list[bytes] = []
    with pytest.raises(DocumentDamaged):
        async for chunk in archive.stream(ref.sha256):
            served.append(chunk)
    # Only the intact chunk before it went out.
    assert served == [data[:CHUNK_BYTES]]


@pytest.mark.parametrize("role", ["ingest", "validate"])
async def test_the_services_can_neither_change_nor_delete_archived_bytes(
    stack: Stack, archive: PostgresArchive, role: str
) -> None:
    data = os.urandom(100)
    ref = file_ref(data, "text/plain", "n.txt", ORIGIN_SUBMITTED)
    async with archive.database.pool.acquire() as conn, conn.transaction():
        await archive.put_many(conn, [(ref, data)])
    host_part = stack.database_url.split("@", 1)[1]
    passfile = stack.run_dir / "secrets" / f"pgpass-{role}"
    conn = await asyncpg.connect(f"postgresql://{role}@{host_part}", passfile=str(passfile))
    try:
        document_id = await conn.fetchval("SELECT id FROM archive.documents WHERE sha256 = $1", ref.sha256)
        refused = (asyncpg.IntegrityConstraintViolationError, asyncpg.InsufficientPrivilegeError)
        for statement in (
            "UPDATE archive.chunks SET data = 'x' WHERE document_id = $1",
            "DELETE FROM archive.chunks WHERE document_id = $1",
            "DELETE FROM archive.documents WHERE id = $1",
            "UPDATE archive.documents SET size_bytes = 1 WHERE id = $1",
            "UPDATE archive.documents SET retain_until = now() WHERE id = $1",
        ):
            with pytest.raises(refused):
                await conn.execute(statement, document_id)
        with pytest.raises(refused):
            await conn.execute("TRUNCATE archive.chunks")
    finally:
        await conn.close()
    assert await archive.read(ref.sha256) == data


async def test_files_read_together_are_each_checked_on_their_own(stack: Stack, archive: PostgresArchive) -> None:
    good, bad, empty = os.urandom(CHUNK_BYTES + 10), os.urandom(500), b""
    refs = [file_ref(data, "application/octet-stream", "f", ORIGIN_SUBMITTED) for data in (good, bad, empty)]
    await archive.store(list(zip(refs, (good, bad, empty), strict=True)))
    await tamper_with_chunks(stack.database_url, refs[1].sha256, "'x'")
    missing = hashlib.sha256(os.urandom(8)).hexdigest()
    # Concurrent readers share queries; each gets its own verdict.
    together = CoalescingArchive(archive)
    results = await asyncio.gather(
        *(together.read(ref.sha256) for ref in refs), together.read(missing), return_exceptions=True
    )
    assert results[0] == good and results[2] == b""
    assert isinstance(results[1], DocumentDamaged) and isinstance(results[3], DocumentMissing)
