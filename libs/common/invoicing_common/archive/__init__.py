"""The document archive: each invoice document and attachment stored once,
immutable, under its SHA-256 (docs/archive.md)."""

from invoicing_common.archive.model import (
    CHUNK_BYTES,
    ORIGIN_EMBEDDED,
    ORIGIN_INVOICE,
    ORIGIN_SUBMITTED,
    ArchiveError,
    DocumentDamaged,
    DocumentMissing,
    FileRef,
    file_ref,
)

__all__ = [
    "CHUNK_BYTES",
    "ORIGIN_EMBEDDED",
    "ORIGIN_INVOICE",
    "ORIGIN_SUBMITTED",
    "ArchiveError",
    "DocumentDamaged",
    "DocumentMissing",
    "FileRef",
    "file_ref",
]
