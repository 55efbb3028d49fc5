from __future__ import annotations

from pathlib import Path

from pydantic import Field

from invoicing_common.archive.settings import ArchiveSettings
from invoicing_common.settings import GrpcSettings

_MIB = 1024 * 1024


class IngestSettings(GrpcSettings, ArchiveSettings):
    grpc_port: int = Field(default=17001, ge=0, le=65535)
    # SubmitInvoice: larger documents are refused with INVALID_ARGUMENT
    # (field "document"); UploadInvoice takes them.
    max_document_bytes: int = Field(default=20 * _MIB, ge=1)
    # UploadInvoice: each attachment, and the invoice with all its files
    # (Chorus Pro's limits: 10 MB and 120 MB). Over a limit: INVALID_ARGUMENT
    # naming it, and nothing is stored.
    max_attachment_bytes: int = Field(default=10 * _MIB, ge=1)
    max_upload_bytes: int = Field(default=120 * _MIB, ge=1)
    max_attachments: int = Field(default=100, ge=0, le=10_000)
    # An upload whose client sends nothing for this long is abandoned (its
    # transaction rolled back), so a stalled client holds no connection.
    upload_idle_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    # GetInvoiceDocument asks the status service, with the caller's own
    # token, whether the caller may see the invoice and which files it has.
    status_address: str = "127.0.0.1:17004"
    # CA bundle for the status service's TLS (system roots when unset).
    status_ca_file: Path | None = None
    otel_service_name: str = "invoicing-ingest"
