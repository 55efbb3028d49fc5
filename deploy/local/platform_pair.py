"""Two platforms on one machine (`make up PLATFORMS=2`): what tells platform
B (`peer`) apart from platform A (`local`, today's stack), and the registry
files through which each finds the other (invoicing_common.platforms).

They share the servers (one Kafka cluster, one PostgreSQL server, one
Keycloak realm), the Kafka principals, the database roles and the TLS
files. Each has its own services and ports, topics (B's carry the prefix
`peer.`), consumer groups (its OTEL_SERVICE_NAME, prefixed the same way),
database and platform account. docs/deploy.md, "Two platforms on one
machine", says the same for people.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Platform:
    id: str  # its PLATFORM_ID
    topic_prefix: str  # its INVOICING_TOPIC_PREFIX
    database: str
    # Put before its services' names: pid files, logs, `stack.py stop NAME`.
    part_prefix: str
    # Put before the variables .run/env exports for it (PEER_INGEST_ADDR).
    env_prefix: str
    # Added to platform A's service ports (metrics and health follow).
    port_offset: int

    @property
    def client_id(self) -> str:
        """Its account in the shared realm: what it calls the other with."""
        return f"platform-{self.id}"

    def service_name(self, service: str) -> str:
        """OTEL_SERVICE_NAME of its ``service``, which is also the consumer
        group: prefixed like the topics, so one ACL prefix covers both."""
        return f"{self.topic_prefix}invoicing-{service}"


def platform_a(platform_id: str, database: str) -> Platform:
    return Platform(platform_id, topic_prefix="", database=database, part_prefix="", env_prefix="", port_offset=0)


PEER = Platform("peer", topic_prefix="peer.", database="invoicing_peer", part_prefix="peer-", env_prefix="PEER_",
                port_offset=10)  # fmt: skip


@dataclass(frozen=True)
class PeerEntry:
    """How one platform reaches the other: one [platforms.ID] table."""

    platform: Platform
    ingest: str
    exchange: str
    ca_file: Path
    token_url: str
    client_id: str  # our account, to call it
    client_secret_file: Path
    caller_client_id: str  # its account, when it calls us


def registry_text(entry: PeerEntry) -> str:
    """The PLATFORMS_FILE of a platform that knows ``entry`` only."""
    # JSON strings are valid TOML basic strings: quoting done once.
    fields = {
        "name": f"Platform {entry.platform.id} (local stack)",
        "ingest": entry.ingest,
        "exchange": entry.exchange,
        "ca_file": str(entry.ca_file),
        "token_url": entry.token_url,
        "client_id": entry.client_id,
        "client_secret_file": str(entry.client_secret_file),
        "caller_client_id": entry.caller_client_id,
    }
    lines = ["# Written by deploy/local/stack.py (PLATFORMS=2); read through PLATFORMS_FILE.",
             f"[platforms.{json.dumps(entry.platform.id)}]"]  # fmt: skip
    lines += [f"{key} = {json.dumps(value)}" for key, value in fields.items()]
    return "\n".join(lines) + "\n"
