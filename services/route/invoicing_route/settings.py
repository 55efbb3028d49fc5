from __future__ import annotations

from pydantic import Field, model_validator

from invoicing_common.archive.settings import ArchiveSettings
from invoicing_common.settings import GrpcSettings


class RouteSettings(GrpcSettings, ArchiveSettings):
    """The archive settings serve the delivery stage, which reads the files
    of invoices routed to another platform (the peers: PLATFORMS_FILE)."""

    grpc_port: int = Field(default=17003, ge=0, le=65535)
    # Upsert/Delete answer once this instance's index has the change, or
    # after this many seconds (the change is durable either way).
    directory_apply_timeout_seconds: float = Field(default=5.0, gt=0)
    # Producer linger for directory changes: larger batches for bulk imports.
    directory_linger_ms: int = Field(default=20, ge=0, le=1000)
    # Delivery to another platform: a failure that may pass (the platform or
    # its token endpoint unreachable, overloaded, too slow) is retried after
    # this wait, doubled each time up to the max, for as long as it takes.
    delivery_backoff_initial_seconds: float = Field(default=0.5, gt=0, le=3600)
    delivery_backoff_max_seconds: float = Field(default=30.0, gt=0, le=3600)
    # The deadline of one call to the destination's ingest (an upload of a
    # large invoice with its attachments included).
    delivery_call_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    # Invoices in flight per instance: those for a reachable platform go on
    # while others wait for theirs to come back.
    delivery_concurrency: int = Field(default=16, ge=1, le=1000)
    otel_service_name: str = "invoicing-route"

    @model_validator(mode="after")
    def _backoff_ordered(self) -> RouteSettings:
        if self.delivery_backoff_max_seconds < self.delivery_backoff_initial_seconds:
            raise ValueError(
                f"delivery_backoff_max_seconds ({self.delivery_backoff_max_seconds}) must be at least "
                f"delivery_backoff_initial_seconds ({self.delivery_backoff_initial_seconds})"
            )
        return self

    @property
    def delivery_group(self) -> str:
        """The delivery stage's consumer group, beside the routing stage's
        (the service name): both read what the other does not."""
        return f"{self.otel_service_name}-delivery"
