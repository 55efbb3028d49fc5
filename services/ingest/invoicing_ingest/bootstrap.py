"""Composition root: wires settings to adapters and the servicer."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files

from invoicing_common.db import Database
from invoicing_common.grpc_server import GrpcServer
from invoicing_common.kafka import ProducerService
from invoicing_ingest.api import ACCESS_POLICY, STREAMING_METHODS, IngestServicer, registrar
from invoicing_ingest.repository import ReceiptRepository
from invoicing_ingest.settings import IngestSettings


@dataclass
class Ingest:
    database: Database
    kafka: ProducerService
    grpc: GrpcServer


def bootstrap(settings: IngestSettings) -> Ingest:
    database = Database(
        settings.database_url,
        schema="ingest",
        migrations=files("invoicing_ingest") / "migrations",
        command_timeout=settings.database_command_timeout_seconds,
    )
    kafka = ProducerService(settings, client_id=settings.otel_service_name)
    servicer = IngestServicer(settings, kafka, ReceiptRepository(database))
    server = GrpcServer(settings, registrar(servicer), ACCESS_POLICY, limited_streams=STREAMING_METHODS)
    return Ingest(database=database, kafka=kafka, grpc=server)
