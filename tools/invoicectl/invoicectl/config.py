"""Where the CLI finds the system: environment variables (as written to
.run/env by `make up`), defaulting to the local stack's ports."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Endpoints:
    ingest: str
    status: str
    kafka: str

    @classmethod
    def from_env(cls) -> Endpoints:
        return cls(
            ingest=os.environ.get("INGEST_ADDR", "127.0.0.1:17001"),
            status=os.environ.get("STATUS_ADDR", "127.0.0.1:17004"),
            kafka=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092"),
        )


GRPC_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]
