from __future__ import annotations

from pydantic import Field

from invoicing_common.settings import GrpcSettings


class RouteSettings(GrpcSettings):
    grpc_port: int = Field(default=17003, ge=0, le=65535)
    # Upsert/Delete answer once this instance's index has the change, or
    # after this many seconds (the change is durable either way).
    directory_apply_timeout_seconds: float = Field(default=5.0, gt=0)
    # Producer linger for directory changes: larger batches for bulk imports.
    directory_linger_ms: int = Field(default=20, ge=0, le=1000)
    otel_service_name: str = "invoicing-route"
