"""Settings base: every service reads one typed class from the environment.

Unknown or malformed values fail at start, before any connection is made.
Secrets (passwords) can come from a file named by a ``*_FILE`` setting, so
that they need not sit in a process's environment; docs/security.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def read_secret_file(path: Path, setting: str) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"{setting}: cannot read {path}: {exc.strerror}") from None


class KafkaClientSettings(BaseSettings):
    """How to reach and authenticate to Kafka: every client of the cluster
    (services, CLI, tests) builds its aiokafka clients from this."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True)

    kafka_bootstrap_servers: str = Field(default="127.0.0.1:19092", min_length=1)
    kafka_security_protocol: Literal["PLAINTEXT", "SASL_PLAINTEXT", "SSL", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = "SCRAM-SHA-512"
    kafka_sasl_username: str = ""
    kafka_sasl_password: SecretStr = SecretStr("")
    # Read at start when set; wins over kafka_sasl_password.
    kafka_sasl_password_file: Path | None = None
    # CA bundle for SSL / SASL_SSL listeners (system roots when unset).
    kafka_ca_file: Path | None = None

    @model_validator(mode="after")
    def _credentials_complete(self) -> KafkaClientSettings:
        if self.kafka_sasl_password_file is not None:
            secret = read_secret_file(self.kafka_sasl_password_file, "kafka_sasl_password_file")
            object.__setattr__(self, "kafka_sasl_password", SecretStr(secret))
        if self.kafka_security_protocol == "SASL_PLAINTEXT" and self.kafka_sasl_mechanism == "PLAIN":
            # PLAIN sends the password itself; without TLS, anyone on the path reads it.
            raise ValueError("kafka_sasl_mechanism PLAIN needs kafka_security_protocol SASL_SSL, not SASL_PLAINTEXT")
        if self.kafka_security_protocol.startswith("SASL") and not (
            self.kafka_sasl_username and self.kafka_sasl_password.get_secret_value()
        ):
            raise ValueError(
                f"kafka_security_protocol {self.kafka_security_protocol} needs kafka_sasl_username and "
                "kafka_sasl_password (or kafka_sasl_password_file)"
            )
        return self

    def kafka_client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for any aiokafka client: where, and as whom."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.kafka_bootstrap_servers,
            "security_protocol": self.kafka_security_protocol,
        }
        if self.kafka_security_protocol.startswith("SASL"):
            kwargs["sasl_mechanism"] = self.kafka_sasl_mechanism
            kwargs["sasl_plain_username"] = self.kafka_sasl_username
            kwargs["sasl_plain_password"] = self.kafka_sasl_password.get_secret_value()
        if self.kafka_security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context  # type: ignore[import-untyped]

            kwargs["ssl_context"] = create_ssl_context(cafile=str(self.kafka_ca_file) if self.kafka_ca_file else None)
        return kwargs


class ServiceSettings(KafkaClientSettings):
    # The password comes from PGPASSFILE or the URL; a service's login role
    # has rights on its own schema only (docs/security.md).
    database_url: str = Field(default="postgresql://invoicing@127.0.0.1:15432/invoicing")
    # One statement's limit: past it, it fails (and is retried) rather than hang.
    database_command_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    # Health turns NOT_SERVING once the database has not answered this long.
    health_database_grace_seconds: float = Field(default=15.0, gt=0, le=3600)
    log_level: str = "INFO"
    # Seconds in-flight RPCs get to finish after SIGTERM.
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    platform_id: str = Field(default="local", min_length=1)
    # Prometheus text-format scrape port for this service's metrics (0: off).
    metrics_port: int = Field(default=0, ge=0, le=65535)
    # How fast a crashed consumer's partitions move to the survivors.
    kafka_session_timeout_seconds: float = Field(default=10.0, ge=3.0, le=300.0)
    # On a revocation or a stop, the records in hand get this long to finish
    # before they are cancelled and left (uncommitted) to the next owner.
    kafka_drain_timeout_seconds: float = Field(default=15.0, gt=0, le=600.0)
    # A member that has not polled for this long is put out of its group.
    # The stream runtime polls even while its handlers are busy (fetching
    # paused), so this bounds a stuck loop, not a slow handler.
    kafka_max_poll_interval_seconds: float = Field(default=300.0, ge=10.0, le=3600.0)
    # A consumer fetch returns once this much is there or the wait is over.
    # Records carry references of a few hundred bytes, so 32 KiB never filled
    # below saturation and every hop waited out the 50 ms it was paired with.
    # Now a record goes as soon as it is there, a quiet consumer asks the
    # broker twice a second instead of twenty times, and under load batches
    # still form while a handler is busy, since aiokafka fetches a partition
    # again only once its buffered records are taken (docs/performance-history.md,
    # "Consumer fetches").
    kafka_fetch_min_bytes: int = Field(default=1, ge=1, le=64 * 1024 * 1024)
    kafka_fetch_max_wait_ms: int = Field(default=500, ge=0, le=1500)
    # The same for consumers with a batch handler (status), and for stages
    # off the invoice's path (StreamApp(off_path=True)): fetching each
    # record as it came cost status 0.6-1.5 ms of CPU per invoice and took it
    # from validate on a loaded machine; their records wait for the batch.
    kafka_batch_fetch_min_bytes: int = Field(default=32 * 1024, ge=1, le=64 * 1024 * 1024)
    kafka_batch_fetch_max_wait_ms: int = Field(default=50, ge=0, le=1500)
    # ...but only while records come at least three per that wait: below, a
    # batch consumer on the invoice's path fetches as the record consumers
    # do, and sends each batch as soon as its first record is there
    # (kafka/pace.py; false: always the batch fetch and interval).
    kafka_batch_fetch_adaptive: bool = True
    # Stages off the invoice's path (route's delivery to other platforms,
    # status's exchange) wait longer: twenty empty fetches a second each
    # were a third of the quiet stack's CPU (docs/performance-history.md, "What halving would take").
    kafka_background_fetch_max_wait_ms: int = Field(default=250, ge=0, le=1500)
    # How long the producers on the invoice's path (the stream producers of
    # validated, routed and DLQ records; ingest's and status's outbox relays)
    # wait to fill a batch. Batches form without it under load: aiokafka
    # keeps one produce request in flight per broker, and what comes in the
    # meantime goes in the next. 20 ms once saved CPU, when records carried
    # the documents; with references only, 5 ms saved 17 ms per hop, and 0
    # another 5 per hop at no measurable cost (docs/performance-history.md, third round).
    kafka_producer_linger_ms: int = Field(default=0, ge=0, le=1000)
    # ...except while a stream producer sends at least two records per this
    # linger (200 a second at 10 ms: only near capacity on this machine):
    # then it lingers this long, and its produce requests carry several
    # records each (kafka/pace.py; 0: always kafka_producer_linger_ms).
    kafka_producer_busy_linger_ms: int = Field(default=10, ge=0, le=1000)
    # uvloop: the event loop in C (docs/performance-history.md has the measurement).
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"

    @model_validator(mode="after")
    def _drain_inside_poll_interval(self) -> ServiceSettings:
        if self.kafka_drain_timeout_seconds >= self.kafka_max_poll_interval_seconds:
            raise ValueError(
                f"kafka_drain_timeout_seconds ({self.kafka_drain_timeout_seconds}) must be less than "
                f"kafka_max_poll_interval_seconds ({self.kafka_max_poll_interval_seconds})"
            )
        return self


class GrpcSettings(ServiceSettings):
    grpc_host: str = "127.0.0.1"
    grpc_port: int = Field(default=0, ge=0, le=65535)
    grpc_max_message_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    # A second, plaintext port that serves grpc.health.v1 and nothing else
    # (0: none), for probes that speak no TLS: the kubelet's gRPC probes.
    grpc_health_port: int = Field(default=0, ge=0, le=65535)
    # TLS is not optional: the server has no plaintext port.
    grpc_tls_cert_file: Path | None = None
    grpc_tls_key_file: Path | None = None
    # Set: callers must also present a client certificate signed by this CA
    # (mTLS, e.g. for platform-to-platform callers), besides their token.
    grpc_tls_client_ca_file: Path | None = None
    # The OpenID Connect issuer whose access tokens are accepted, and the
    # audience they must name. Nothing here is specific to one provider.
    oidc_issuer: str = ""
    oidc_audience: str = "invoicing-api"
    # Default: the issuer's discovery document names it.
    oidc_jwks_url: str | None = None
    # CA bundle to trust the issuer's HTTPS (system roots when unset).
    oidc_ca_file: Path | None = None
    # Claims (dotted paths allowed, e.g. realm_access.roles) holding the
    # account's roles and the SIRENs it acts for.
    oidc_roles_claim: str = "roles"
    oidc_sirens_claim: str = "sirens"
    oidc_clock_skew_seconds: float = Field(default=30.0, ge=0, le=300)
    # The issuer's keys are fetched again once this old, so a key it
    # removed stops being trusted (and at once for a key id never seen).
    oidc_jwks_max_age_seconds: float = Field(default=300.0, ge=30, le=86_400)
    # Per account: sustained calls (and client-stream messages) per second,
    # the burst above it, and the streams (WatchInvoices, SubmitInvoices,
    # Import) open at once.
    quota_requests_per_second: float = Field(default=200.0, gt=0)
    quota_burst: int = Field(default=400, ge=1)
    quota_streams: int = Field(default=4, ge=1)
    # Unary calls that arrive without a deadline get this one.
    grpc_default_deadline_seconds: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _security_complete(self) -> GrpcSettings:
        missing = [
            name
            for name, value in (
                ("grpc_tls_cert_file", self.grpc_tls_cert_file),
                ("grpc_tls_key_file", self.grpc_tls_key_file),
                ("oidc_issuer", self.oidc_issuer),
            )
            if not value
        ]
        if missing:
            raise ValueError(
                f"{', '.join(missing)} must be set: every gRPC server serves TLS only and authenticates "
                "each call with the issuer's access tokens (docs/security.md)"
            )
        return self
