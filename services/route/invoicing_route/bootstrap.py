"""Composition root for the route service."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files

from mode import Service

from invoicing_common import topics
from invoicing_common.archive.postgres import open_archive
from invoicing_common.db import Database
from invoicing_common.grpc_server import GrpcServer
from invoicing_common.health import HealthMonitor, database_reachable, stream_alive
from invoicing_common.kafka import StreamApp, register_lag_gauge
from invoicing_common.kafka.outbox import OutboxRelay
from invoicing_common.platforms import load_registry
from invoicing_route import agents, delivery
from invoicing_route.api import ACCESS_POLICY, STREAMING_METHODS, DirectoryServicer, registrar
from invoicing_route.directory import DirectoryIndex
from invoicing_route.feed import DirectoryFeed, send_batches
from invoicing_route.peers import PeerLinks
from invoicing_route.repository import DirectoryRepository
from invoicing_route.settings import RouteSettings
from invoicing_route.usecases import OUTBOX, Directory


@dataclass
class Route:
    app: StreamApp
    # The delivery stage: its own consumer group on the routed topic.
    delivery: StreamApp
    database: Database
    # The object-store client (ARCHIVE_STORE=s3) and the channels to the
    # other platforms.
    archive: list[Service]
    relay: OutboxRelay
    feed: DirectoryFeed
    grpc: GrpcServer
    health: HealthMonitor


def bootstrap(settings: RouteSettings) -> Route:
    # A wrong PLATFORMS_FILE stops the start here, before any record is read.
    registry = load_registry()
    database = Database(
        settings.database_url,
        schema="directory",
        migrations=files("invoicing_route") / "migrations",
        command_timeout=settings.database_command_timeout_seconds,
    )
    # Publishes directory changes (one leader among the instances) in whole
    # record batches: a bulk import costs microseconds per record.
    relay = OutboxRelay(
        database,
        OUTBOX,
        settings,
        f"{settings.otel_service_name}-directory",
        batch_size=5000,
        linger_ms=settings.directory_linger_ms,
        sender=send_batches,
        topics=[topics.DIRECTORY],
        producer_options={"max_batch_size": 1024 * 1024},
    )
    feed = DirectoryFeed(
        settings,
        DirectoryIndex(),
        client_id=f"{settings.otel_service_name}-directory-feed",
    )
    directory = Directory(DirectoryRepository(database), relay, feed, settings.directory_apply_timeout_seconds)
    app = StreamApp(settings.otel_service_name, settings)
    agents.register(app, settings, directory)
    # Always wired, peers or not: an invoice routed to a platform the
    # registry does not know is held (DLQ), never left unsent unnoticed.
    # The archive is read with route's own role (granted read access).
    archive, archive_services = open_archive(database, settings)
    links = PeerLinks()
    # It reads every routed record to deliver those bound for other
    # platforms: up to a quarter of a second more for those
    # (KAFKA_BACKGROUND_FETCH_MAX_WAIT_MS), a fetch per record less.
    delivery_app = StreamApp(settings.delivery_group, settings, off_path=True)
    deliverer = delivery.Deliverer(settings, links, archive, delivery_app.retry_pause)
    delivery.register(delivery_app, settings, registry, deliverer)
    register_lag_gauge(app, delivery_app)
    server = GrpcServer(
        settings,
        registrar(DirectoryServicer(directory, settings.platform_id)),
        ACCESS_POLICY,
        limited_streams=STREAMING_METHODS,
    )
    health = HealthMonitor(
        server,
        [
            database_reachable(database, settings.health_database_grace_seconds),
            stream_alive(app),
            stream_alive(delivery_app),
        ],
    )
    return Route(
        app=app,
        delivery=delivery_app,
        database=database,
        archive=[*archive_services, links],
        relay=relay,
        feed=feed,
        grpc=server,
        health=health,
    )
