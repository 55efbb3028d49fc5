"""Composition root: wires settings to adapters and the servicer."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files

from mode import Service

from invoicing_common import topics
from invoicing_common.archive import postgres as archive_store
from invoicing_common.db import Database
from invoicing_common.grpc_server import GrpcServer
from invoicing_common.health import HealthMonitor, database_reachable
from invoicing_common.kafka.outbox import OutboxRelay
from invoicing_common.platforms import load_registry
from invoicing_ingest.api import ACCESS_POLICY, STREAMING_METHODS, IngestServicer, registrar
from invoicing_ingest.documents import DocumentServicer
from invoicing_ingest.repository import OUTBOX, ReceiptRepository
from invoicing_ingest.settings import IngestSettings
from invoicing_ingest.uploads import Uploader


class ArchiveMigrations(Service):
    """Ingest owns the archive's tables (validate reads and adds to them)."""

    def __init__(self, database: Database) -> None:
        super().__init__()
        self._database = database

    async def on_start(self) -> None:
        await archive_store.migrate(self._database)


@dataclass
class Ingest:
    database: Database
    # Migrations, the object-store client when the bytes go to S3, and the
    # download service's channel to status.
    archive: list[Service]
    relay: OutboxRelay
    grpc: GrpcServer
    health: HealthMonitor


def bootstrap(settings: IngestSettings) -> Ingest:
    database = Database(
        settings.database_url,
        schema="ingest",
        migrations=files("invoicing_ingest") / "migrations",
        command_timeout=settings.database_command_timeout_seconds,
        # Its statements write arrays of rows and look them up by key.
        generic_plans=True,
    )
    archive, archive_services = archive_store.open_archive(database, settings)
    # Publishes the receipts' `received` records (one leader among the
    # instances); the API answers once a receipt and its record are committed.
    relay = OutboxRelay(
        database,
        OUTBOX,
        settings,
        f"{settings.otel_service_name}-outbox",
        topics=[topics.RECEIVED],
        linger_ms=settings.kafka_producer_linger_ms,
    )
    receipts = ReceiptRepository(database, archive, on_commit=relay.wake)
    # The other platforms that may submit here (PLATFORMS_FILE); a wrong
    # file stops the start.
    platforms = load_registry()
    servicer = IngestServicer(settings, receipts, Uploader(settings, database, archive, receipts), platforms)
    documents = DocumentServicer(
        archive, settings.status_address, str(settings.status_ca_file) if settings.status_ca_file else None
    )
    server = GrpcServer(settings, registrar(servicer, documents), ACCESS_POLICY, limited_streams=STREAMING_METHODS)
    health = HealthMonitor(server, [database_reachable(database, settings.health_database_grace_seconds)])
    return Ingest(
        database=database,
        archive=[ArchiveMigrations(database), *archive_services, documents],
        relay=relay,
        grpc=server,
        health=health,
    )
