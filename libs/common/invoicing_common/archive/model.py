"""What the archive stores and how a file is named: pure, no I/O.

A file is addressed by the SHA-256 of its bytes. The reference (hash, size,
media type, name, origin) is what Kafka records and API answers carry; the
bytes stay in the archive.
"""

from __future__ import annotations

import hashlib
import mimetypes
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Final, Protocol

from invoicing.v1 import common_pb2

# Upload chunks, stored rows and download chunks alike: at most this much.
CHUNK_BYTES: Final = 1024 * 1024

MEDIA_XML: Final = "application/xml"
MEDIA_PDF: Final = "application/pdf"
MEDIA_OCTET_STREAM: Final = "application/octet-stream"

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# RFC 6838 type/subtype, without parameters.
_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")

ORIGIN_INVOICE: Final = common_pb2.FILE_ORIGIN_INVOICE
ORIGIN_SUBMITTED: Final = common_pb2.FILE_ORIGIN_SUBMITTED
ORIGIN_EMBEDDED: Final = common_pb2.FILE_ORIGIN_EMBEDDED


class ArchiveError(Exception):
    """The archive cannot serve a file."""


class DocumentMissing(ArchiveError):
    def __init__(self, sha256: str) -> None:
        super().__init__(f"no archived file has SHA-256 {sha256}")
        self.sha256 = sha256


class DocumentDamaged(ArchiveError):
    """Stored bytes no longer match their hash: never served."""

    def __init__(self, sha256: str, detail: str) -> None:
        super().__init__(f"archived file {sha256} is damaged ({detail}); it is not served")
        self.sha256 = sha256
        self.detail = detail


class ChunkMissing(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(f"object {key} is missing")
        self.key = key


class ChunkStore(Protocol):
    """Where chunk bytes live when not in the archive's rows (objects.py),
    each named by the chunk's SHA-256."""

    async def put(self, sha256: str, data: bytes) -> None: ...

    async def get(self, sha256: str) -> bytes: ...


@dataclass(frozen=True)
class FileRef:
    sha256: str
    size_bytes: int
    media_type: str
    filename: str
    origin: int = ORIGIN_INVOICE

    def to_proto(self) -> common_pb2.DocumentRef:
        return common_pb2.DocumentRef(
            sha256=self.sha256,
            size_bytes=self.size_bytes,
            media_type=self.media_type,
            filename=self.filename,
            origin=self.origin,  # type: ignore[arg-type]
        )

    @classmethod
    def from_proto(cls, ref: common_pb2.DocumentRef) -> FileRef:
        return cls(ref.sha256, ref.size_bytes, ref.media_type, ref.filename, ref.origin)

    def named(self, filename: str, origin: int) -> FileRef:
        return replace(self, filename=filename, origin=origin)


def file_ref(data: bytes, media_type: str, filename: str, origin: int) -> FileRef:
    return FileRef(hashlib.sha256(data).hexdigest(), len(data), media_type, filename, origin)


def is_sha256(value: str) -> bool:
    return _SHA256_HEX.fullmatch(value) is not None


def split(data: bytes, size: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The stored chunks of ``data``; an empty file has none."""
    view = memoryview(data)
    for start in range(0, len(data), size):
        yield bytes(view[start : start + size])


def sniff_media_type(head: bytes) -> str:
    """The invoice document's media type, from its first bytes: the formats
    accepted are PDF (Factur-X) and XML (UBL, CII)."""
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if start.startswith(b"%PDF-"):
        return MEDIA_PDF
    if start.startswith(b"<"):
        return MEDIA_XML
    return MEDIA_OCTET_STREAM


def attachment_media_type(declared: str, filename: str) -> str | None:
    """The media type of an attachment: the one declared, else guessed from
    its name; None when the declared one is not a media type."""
    if declared:
        value = declared.strip().lower()
        return value if _MEDIA_TYPE.fullmatch(value) else None
    guessed, _ = mimetypes.guess_type(filename, strict=False)
    return guessed or MEDIA_OCTET_STREAM
