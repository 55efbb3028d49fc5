"""The archive with its bytes in an S3-compatible object store
(ARCHIVE_STORE=s3), against a real S3 API server over HTTP: moto's
standalone server, started by the test and stopped by its pid. PostgreSQL
(the stack's) keeps the index; no chunk row holds bytes. Every object read
is checked against the hash its row names."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from invoicing_common.archive import ORIGIN_SUBMITTED, DocumentDamaged, file_ref
from invoicing_common.archive.model import CHUNK_BYTES
from invoicing_common.archive.objects import S3Chunks
from invoicing_common.archive.postgres import PostgresArchive, open_archive
from invoicing_common.archive.settings import ArchiveSettings
from invoicing_common.db import Database
from tests.support import Stack, free_port

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    assert server is not None, "moto_server is installed with the dev requirements"
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        # Bounded poll: the server answers once it listens.
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text()
            try:
                httpx.get(endpoint, timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the S3 server did not start"
                time.sleep(0.1)
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
async def s3_archive(stack: Stack, s3_endpoint: str) -> AsyncIterator[tuple[PostgresArchive, S3Chunks]]:
    settings = ArchiveSettings(
        archive_store="s3",
        archive_s3_endpoint_url=s3_endpoint,
        archive_s3_bucket=f"archive-{uuid.uuid4().hex[:8]}",
        archive_s3_access_key_id="test",
        archive_s3_secret_access_key="test",  # type: ignore[arg-type]
        archive_s3_prefix="invoices/",
    )
    database = Database(stack.database_url, schema="public")
    await database.start()
    archive, services = open_archive(database, settings)
    (objects,) = services
    assert isinstance(objects, S3Chunks)
    await objects.start()
    try:
        await objects.client.create_bucket(Bucket=settings.archive_s3_bucket)
        yield archive, objects
    finally:
        await objects.stop()
        await database.stop()


async def _row_bytes(archive: PostgresArchive, sha256: str) -> list[bytes | None]:
    async with archive.database.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT c.data FROM archive.chunks c JOIN archive.documents d ON d.id = c.document_id"
            " WHERE d.sha256 = $1 ORDER BY c.seq",
            sha256,
        )
    return [row["data"] for row in rows]


async def test_the_bytes_go_to_the_object_store_and_come_back_checked(
    s3_archive: tuple[PostgresArchive, S3Chunks],
) -> None:
    archive, objects = s3_archive
    data = os.urandom(2 * CHUNK_BYTES + 999)
    ref = file_ref(data, "application/pdf", "s3.pdf", ORIGIN_SUBMITTED)
    async with archive.database.pool.acquire() as conn, conn.transaction():
        await archive.put_many(conn, [(ref, data)])
    # PostgreSQL holds the index only.
    assert await _row_bytes(archive, ref.sha256) == [None, None, None]
    first = hashlib.sha256(data[:CHUNK_BYTES]).hexdigest()
    stored = await objects.client.get_object(Bucket=objects._settings.archive_s3_bucket, Key=objects.key(first))
    async with stored["Body"] as body:
        assert await body.read() == data[:CHUNK_BYTES]
    assert await archive.read(ref.sha256) == data
    assert b"".join([c async for c in archive.stream(ref.sha256)]) == data

    # A streamed upload writes its chunks there too.
    streamed = os.urandom(CHUNK_BYTES + 5)
    async with archive.database.pool.acquire() as conn, conn.transaction():
        upload = archive.upload(conn)
        await upload.write(streamed)
        up = await upload.finish("application/octet-stream", "u.bin", ORIGIN_SUBMITTED)
    assert await _row_bytes(archive, up.sha256) == [None, None]
    assert await archive.read(up.sha256) == streamed


async def test_an_altered_or_lost_object_is_refused(s3_archive: tuple[PostgresArchive, S3Chunks]) -> None:
    archive, objects = s3_archive
    data = os.urandom(2 * CHUNK_BYTES)
    ref = file_ref(data, "application/pdf", "x.pdf", ORIGIN_SUBMITTED)
    async with archive.database.pool.acquire() as conn, conn.transaction():
        await archive.put_many(conn, [(ref, data)])
    bucket = objects._settings.archive_s3_bucket
    second = hashlib.sha256(data[CHUNK_BYTES:]).hexdigest()
    await objects.client.put_object(Bucket=bucket, Key=objects.key(second), Body=b"not what was stored")
    with pytest.raises(DocumentDamaged, match="chunk 1 does not match its hash"):
        await archive.read(ref.sha256)
    served = []
    with pytest.raises(DocumentDamaged):
        async for chunk in archive.stream(ref.sha256):
            served.append(chunk)
    assert served == [data[:CHUNK_BYTES]]

    await objects.client.delete_object(Bucket=bucket, Key=objects.key(second))
    with pytest.raises(DocumentDamaged, match="chunk 1 is missing from the object store"):
        await archive.read(ref.sha256)
