"""Settings base: every service reads one typed class from the environment.

Unknown or malformed values fail at start, before any connection is made.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True)

    kafka_bootstrap_servers: str = Field(default="127.0.0.1:19092", min_length=1)
    database_url: str = Field(default="postgresql://invoicing@127.0.0.1:15432/invoicing")
    log_level: str = "INFO"
    topic_partitions: int = Field(default=6, ge=1, le=1024)
    # Seconds in-flight RPCs get to finish after SIGTERM.
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    platform_id: str = Field(default="local", min_length=1)
    # Prometheus text-format scrape port for this service's metrics (0: off).
    metrics_port: int = Field(default=0, ge=0, le=65535)
    # How fast a crashed consumer's partitions move to the survivors.
    kafka_session_timeout_seconds: float = Field(default=10.0, ge=3.0, le=300.0)
    # A consumer fetch returns once this much is there or the wait is over:
    # fewer round trips under load, at most the wait per hop when light.
    kafka_fetch_min_bytes: int = Field(default=32 * 1024, ge=1, le=64 * 1024 * 1024)
    kafka_fetch_max_wait_ms: int = Field(default=50, ge=0, le=1500)
    # How long the stream producers (validated, routed, DLQ records) wait to
    # fill a batch. 20 ms cut the pipeline's CPU per invoice by about a tenth
    # against 5 ms (docs/performance.md); ingest's producer, which waits for
    # each acknowledgement, keeps its own 5 ms.
    kafka_producer_linger_ms: int = Field(default=20, ge=0, le=1000)
    # uvloop: the event loop in C (docs/performance.md has the measurement).
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"


class GrpcSettings(ServiceSettings):
    grpc_host: str = "127.0.0.1"
    grpc_port: int = Field(default=0, ge=0, le=65535)
    grpc_max_message_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
