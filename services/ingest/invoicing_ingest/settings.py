from __future__ import annotations

from pydantic import Field

from invoicing_common.settings import GrpcSettings


class IngestSettings(GrpcSettings):
    grpc_port: int = Field(default=17001, ge=0, le=65535)
    # Larger documents are refused with INVALID_ARGUMENT (field "document").
    max_document_bytes: int = Field(default=20 * 1024 * 1024, ge=1)
    otel_service_name: str = "invoicing-ingest"
