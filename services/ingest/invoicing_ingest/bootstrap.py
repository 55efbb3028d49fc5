"""Composition root: wires settings to adapters and the servicer."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files

from invoicing_common import topics
from invoicing_common.db import Database
from invoicing_common.grpc_server import GrpcServer
from invoicing_common.health import HealthMonitor, database_reachable
from invoicing_common.kafka.outbox import OutboxRelay
from invoicing_ingest.api import ACCESS_POLICY, STREAMING_METHODS, IngestServicer, registrar
from invoicing_ingest.repository import OUTBOX, ReceiptRepository
from invoicing_ingest.settings import IngestSettings


@dataclass
class Ingest:
    database: Database
    relay: OutboxRelay
    grpc: GrpcServer
    health: HealthMonitor


def bootstrap(settings: IngestSettings) -> Ingest:
    database = Database(
        settings.database_url,
        schema="ingest",
        migrations=files("invoicing_ingest") / "migrations",
        command_timeout=settings.database_command_timeout_seconds,
    )
    # Publishes the receipts' `received` records (one leader among the
    # instances); the API answers once a receipt and its record are committed.
    relay = OutboxRelay(
        database, OUTBOX, settings, f"{settings.otel_service_name}-outbox", topics=[topics.RECEIVED], linger_ms=5
    )
    servicer = IngestServicer(settings, ReceiptRepository(database, on_commit=relay.wake))
    server = GrpcServer(settings, registrar(servicer), ACCESS_POLICY, limited_streams=STREAMING_METHODS)
    health = HealthMonitor(server, [database_reachable(database, settings.health_database_grace_seconds)])
    return Ingest(database=database, relay=relay, grpc=server, health=health)
