"""Where the CLI finds the system and who it is there: environment
variables (as written to .run/env by `make up`), defaulting to the local
stack's ports.

Every gRPC call goes over TLS (the server is verified against
INVOICING_CA_FILE, or the system's roots) with an OAuth2 access token
obtained by client credentials (INVOICING_CLIENT_ID and
INVOICING_CLIENT_SECRET at INVOICING_TOKEN_URL), cached and renewed before
it expires. Kafka readers use the KAFKA_* settings (in .run/env: the
read-only `operator` principal); `dlq replay` the KAFKA_REPLAY_* ones
(the `replayer` principal).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import grpc

from invoicing_common.auth.client import (
    ClientConfig,
    ConfigError,
    TokenSource,
    secure_channel,
    secure_channel_sync,
    unverified_claims,
)
from invoicing_common.settings import KafkaClientSettings

GRPC_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


@dataclass(frozen=True)
class Endpoints:
    ingest: str
    status: str
    route: str

    @classmethod
    def from_env(cls) -> Endpoints:
        return cls(
            ingest=os.environ.get("INGEST_ADDR", "127.0.0.1:17001"),
            status=os.environ.get("STATUS_ADDR", "127.0.0.1:17004"),
            route=os.environ.get("ROUTE_ADDR", "127.0.0.1:17003"),
        )

    @property
    def kafka(self) -> KafkaClientSettings:
        return kafka_settings()


@cache
def kafka_settings() -> KafkaClientSettings:
    return KafkaClientSettings()


def replay_kafka_settings() -> KafkaClientSettings:
    """The Kafka client of `invoicectl dlq replay`: the principal named by
    KAFKA_REPLAY_SASL_USERNAME (with KAFKA_REPLAY_SASL_PASSWORD_FILE) when
    set, which may write the pipeline's topics; otherwise the usual one."""
    username = os.environ.get("KAFKA_REPLAY_SASL_USERNAME", "")
    if not username:
        return kafka_settings()
    password_file = os.environ.get("KAFKA_REPLAY_SASL_PASSWORD_FILE", "")
    if not password_file:
        raise ConfigError("KAFKA_REPLAY_SASL_USERNAME is set but KAFKA_REPLAY_SASL_PASSWORD_FILE is not")
    return KafkaClientSettings(kafka_sasl_username=username, kafka_sasl_password_file=Path(password_file))


@cache
def client_config() -> ClientConfig:
    """Raises ConfigError naming the variables that are missing."""
    return ClientConfig.from_env()


@cache
def token_source() -> TokenSource:
    config = client_config()
    return TokenSource(config.token_url, config.client_id, config.client_secret, config.ca_file)


def account_sirens() -> list[str]:
    """The companies (SIRENs) the account acts for, as its access token
    says (claim OIDC_SIRENS_CLAIM, default "sirens"). Read, not verified:
    it only chooses what to ask for; the services decide what is shown."""
    value = unverified_claims(token_source().token()).get(os.environ.get("OIDC_SIRENS_CLAIM", "sirens"), [])
    return sorted({str(v) for v in value} if isinstance(value, list) else {str(value)})


def channel(address: str) -> grpc.aio.Channel:
    """A TLS channel whose every call carries the account's access token."""
    return secure_channel(address, token_source(), client_config().ca_file, GRPC_OPTIONS)


def sync_channel(address: str) -> grpc.Channel:
    """The same, for the synchronous API (uploads: see invoicing_common.grpc_streams)."""
    return secure_channel_sync(address, token_source(), client_config().ca_file, GRPC_OPTIONS)
