"""UploadInvoice: an invoice and its attachments, streamed into the archive.

The whole upload is one database transaction: each file's chunks are
written as they arrive (at most one stored chunk and one received chunk in
memory), and the receipt with its `received` record commits with them. An
upload that ends early, stalls, or goes over a limit rolls back: no
receipt, no record and no stored bytes remain, and nothing needs cleaning
up later.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg  # type: ignore[import-untyped]
import grpc
from invoicing.v1 import ingest_pb2

from invoicing_common.archive import CHUNK_BYTES, ORIGIN_INVOICE, ORIGIN_SUBMITTED, FileRef
from invoicing_common.archive.model import attachment_media_type, is_sha256, sniff_media_type
from invoicing_common.archive.postgres import PostgresArchive
from invoicing_common.auth.principal import Principal
from invoicing_common.db import Database
from invoicing_ingest.domain import (
    Receipt,
    Submission,
    SubmissionError,
    check_filename,
    check_idempotency_key,
    new_receipt,
)
from invoicing_ingest.errors import RequestError, invalid
from invoicing_ingest.repository import Announce, ReceiptRepository
from invoicing_ingest.settings import IngestSettings


class _Duplicate(Exception):
    """The same invoice was received before: undo this upload's writes."""

    def __init__(self, receipt: Receipt, submission: Submission) -> None:
        super().__init__(receipt.invoice_id)
        self.receipt = receipt
        self.submission = submission


@dataclass(frozen=True)
class Uploaded:
    receipt: Receipt
    submission: Submission


class _Messages:
    """The client's messages, each within the idle timeout."""

    def __init__(self, requests: AsyncIterator[ingest_pb2.UploadInvoiceRequest], idle_timeout: float) -> None:
        self._iterator = aiter(requests)
        self._idle_timeout = idle_timeout

    async def next(self) -> ingest_pb2.UploadInvoiceRequest | None:
        try:
            async with asyncio.timeout(self._idle_timeout):
                return await anext(self._iterator)
        except StopAsyncIteration:
            return None
        except TimeoutError:
            raise RequestError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "",
                f"no message for {self._idle_timeout:g}s; the upload was abandoned and nothing was stored",
            ) from None


class Uploader:
    def __init__(
        self, settings: IngestSettings, database: Database, archive: PostgresArchive, receipts: ReceiptRepository
    ) -> None:
        self._settings = settings
        self._database = database
        self._archive = archive
        self._receipts = receipts

    async def upload(
        self,
        requests: AsyncIterator[ingest_pb2.UploadInvoiceRequest],
        submitter: Principal,
        announcer: Callable[[Submission], Announce],
        origin_platform: str = "",
    ) -> Uploaded:
        """``origin_platform``: the registry id of the platform submitting
        (api.py decides it), "" for a seller's account."""
        messages = _Messages(requests, self._settings.upload_idle_timeout_seconds)
        first = await messages.next()
        if first is None or first.WhichOneof("part") != "file":
            raise invalid("file", "an upload starts with a message holding the invoice's file header")
        try:
            check_idempotency_key(first.idempotency_key)
        except SubmissionError as exc:
            raise invalid(exc.field, exc.message) from exc
        try:
            async with self._database.pool.acquire() as conn, conn.transaction():
                files = await self._files(conn, first.file, messages)
                submission = Submission(
                    document=b"",
                    filename=files[0].filename,
                    idempotency_key=first.idempotency_key or None,
                    submitter=submitter.subject,
                    sha256=files[0].sha256,
                    submitter_sirens=submitter.sirens,
                    media_type=files[0].media_type,
                    size_bytes=files[0].size_bytes,
                    attachments=tuple(files[1:]),
                    origin_platform=origin_platform,
                )
                receipt = await self._receipts.store_in(
                    conn, submission, new_receipt(datetime.now(UTC)), announcer(submission)
                )
                if receipt.duplicate:
                    raise _Duplicate(receipt, submission)
        except _Duplicate as duplicate:
            # The first upload of this invoice holds its files; this one's
            # writes were rolled back.
            return Uploaded(duplicate.receipt, duplicate.submission)
        self._receipts.committed()
        return Uploaded(receipt, submission)

    async def _files(
        self, conn: asyncpg.Connection, header: ingest_pb2.UploadFile, messages: _Messages
    ) -> list[FileRef]:
        settings = self._settings
        files: list[FileRef] = []
        names: set[str] = set()
        total = 0
        next_header: ingest_pb2.UploadFile | None = header
        while next_header is not None:
            header, next_header = next_header, None
            index = len(files)
            field = "file.filename" if index == 0 else f"attachments[{index - 1}]"
            if index > settings.max_attachments:
                raise invalid("attachments", f"more than {settings.max_attachments} attachments (max_attachments)")
            try:
                check_filename(header.filename, field if index else "filename")
            except SubmissionError as exc:
                raise invalid(exc.field, exc.message) from exc
            if index and (not header.filename or header.filename in names):
                raise invalid(field, f"attachment name {header.filename!r} is empty or used twice in this upload")
            names.add(header.filename)
            declared = header.sha256.lower()
            if declared and not is_sha256(declared):
                raise invalid(f"{field}.sha256", "sha256 must be 64 hexadecimal characters")
            media_type: str | None = ""
            if index:
                media_type = attachment_media_type(header.media_type, header.filename)
                if media_type is None:
                    raise invalid(f"{field}.media_type", f"{header.media_type[:100]!r} is not a media type")
            upload = self._archive.upload(conn)
            head = b""
            while (message := await messages.next()) is not None:
                if message.idempotency_key:
                    raise invalid("idempotency_key", "idempotency_key belongs in the first message only")
                part = message.WhichOneof("part")
                if part == "file":
                    next_header = message.file
                    break
                if part != "chunk":
                    raise invalid("part", "each message holds a file header or a chunk")
                chunk = message.chunk
                if len(chunk) > CHUNK_BYTES:
                    raise invalid("chunk", f"a chunk holds at most {CHUNK_BYTES} bytes; this one {len(chunk)}")
                if index and upload.size + len(chunk) > settings.max_attachment_bytes:
                    raise invalid(
                        field,
                        f"attachment {header.filename!r} is over the limit of {settings.max_attachment_bytes} bytes"
                        " per attachment (max_attachment_bytes); nothing was stored",
                    )
                total += len(chunk)
                if total > settings.max_upload_bytes:
                    raise invalid(
                        "upload",
                        f"the upload is over the limit of {settings.max_upload_bytes} bytes for an invoice with its"
                        " attachments (max_upload_bytes); nothing was stored",
                    )
                if len(head) < 64:
                    head += chunk[: 64 - len(head)]
                await upload.write(chunk)
            if upload.size == 0:
                what = "the invoice document" if index == 0 else f"attachment {header.filename!r}"
                raise invalid(field if index else "document", f"{what} is empty")
            if declared and upload.sha256() != declared:
                raise invalid(
                    f"{field}.sha256" if index else "file.sha256",
                    f"the bytes received hash to {upload.sha256()}, not the {declared} declared; nothing was stored",
                )
            if index == 0:
                media_type = sniff_media_type(head)
            assert media_type is not None
            origin = ORIGIN_SUBMITTED if index else ORIGIN_INVOICE
            files.append(await upload.finish(media_type, header.filename, origin))
        return files
