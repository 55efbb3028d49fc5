from __future__ import annotations

from pydantic import Field

from invoicing_common.settings import GrpcSettings


class StatusSettings(GrpcSettings):
    grpc_port: int = Field(default=17004, ge=0, le=65535)
    # Largest number of status events published in one outbox batch.
    outbox_batch_size: int = Field(default=500, ge=1, le=10_000)
    # Pipeline events applied per transaction (one commit per batch).
    status_batch_size: int = Field(default=200, ge=1, le=5_000)
    # How long a batch waits to fill once its first event is there. Longer
    # batches cost fewer statements per event (docs/performance.md) and add
    # at most this much to each status change's latency.
    status_batch_window_ms: int = Field(default=100, ge=0, le=5_000)
    # Adaptive batches: the next batch goes once this long has passed since
    # the previous one (so at once when the stream is quiet), within the
    # window above. -1: every batch waits the whole window.
    status_batch_interval_ms: int = Field(default=25, ge=-1, le=5_000)
    # Processed event ids and published status events are pruned once this
    # old. More than the input topics keep records (a week), so that no
    # redelivered record can find its id gone; as long as WatchInvoices can
    # resume.
    status_retention_days: int = Field(default=30, ge=8, le=3650)
    # The deadline of one call to another platform's ExchangeService (the
    # exchange stage sending a CDAR message; retried after it).
    exchange_call_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    otel_service_name: str = "invoicing-status"

    @property
    def exchange_group(self) -> str:
        """The exchange stage's consumer group, beside the pipeline's (the
        service name): it reads the status topic this service writes."""
        return f"{self.otel_service_name}-exchange"
