"""Chunk bytes in an S3-compatible object store (ARCHIVE_STORE=s3).

Each chunk is one object named by its own SHA-256, so writing is idempotent
and identical chunks are stored once. The archive's PostgreSQL rows stay
the index: which chunks make a document, their hashes, its retention. An
object written by a transaction that then did not commit is unreferenced,
never wrong; the reader checks every object against the hash its row names.
"""

from __future__ import annotations

import contextlib
from typing import Any

from aiobotocore.session import get_session  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]
from mode import Service

from invoicing_common.archive.model import ChunkMissing
from invoicing_common.archive.settings import ArchiveSettings


class S3Chunks(Service):
    """The object-store client, opened with the service and closed with it."""

    def __init__(self, settings: ArchiveSettings) -> None:
        super().__init__()
        self._settings = settings
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None

    def key(self, sha256: str) -> str:
        return f"{self._settings.archive_s3_prefix}chunks/{sha256}"

    async def on_start(self) -> None:
        s = self._settings
        credentials: dict[str, str] = {}
        if s.archive_s3_access_key_id:
            credentials = {
                "aws_access_key_id": s.archive_s3_access_key_id,
                "aws_secret_access_key": s.archive_s3_secret_access_key.get_secret_value(),
            }
        self._client = await self._stack.enter_async_context(
            get_session().create_client(
                "s3",
                endpoint_url=s.archive_s3_endpoint_url or None,
                region_name=s.archive_s3_region,
                # Retries with backoff for throttling and 5xx answers.
                config=Config(retries={"max_attempts": 5, "mode": "standard"}),
                **credentials,
            )
        )

    async def on_stop(self) -> None:
        await self._stack.aclose()
        self._client = None

    @property
    def client(self) -> Any:
        if self._client is None:
            raise RuntimeError("object store client not started")
        return self._client

    async def put(self, sha256: str, data: bytes) -> None:
        await self.client.put_object(Bucket=self._settings.archive_s3_bucket, Key=self.key(sha256), Body=data)

    async def get(self, sha256: str) -> bytes:
        try:
            answer = await self.client.get_object(Bucket=self._settings.archive_s3_bucket, Key=self.key(sha256))
        except self.client.exceptions.NoSuchKey:
            raise ChunkMissing(self.key(sha256)) from None
        async with answer["Body"] as body:
            data: bytes = await body.read()
        return data
