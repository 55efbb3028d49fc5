"""Composition root for the route service."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files

from invoicing_common.db import Database
from invoicing_common.grpc_server import GrpcServer
from invoicing_common.kafka import StreamApp
from invoicing_route import agents
from invoicing_route.api import ACCESS_POLICY, STREAMING_METHODS, DirectoryServicer, registrar
from invoicing_route.directory import DirectoryIndex
from invoicing_route.feed import DirectoryFeed, DirectoryPublisher
from invoicing_route.repository import DirectoryRepository
from invoicing_route.settings import RouteSettings
from invoicing_route.usecases import Directory


@dataclass
class Route:
    app: StreamApp
    database: Database
    publisher: DirectoryPublisher
    feed: DirectoryFeed
    grpc: GrpcServer


def bootstrap(settings: RouteSettings) -> Route:
    database = Database(
        settings.database_url,
        schema="directory",
        migrations=files("invoicing_route") / "migrations",
        command_timeout=settings.database_command_timeout_seconds,
    )
    publisher = DirectoryPublisher(settings, f"{settings.otel_service_name}-directory", settings.directory_linger_ms)
    feed = DirectoryFeed(
        settings,
        DirectoryIndex(),
        client_id=f"{settings.otel_service_name}-directory-feed",
    )
    directory = Directory(DirectoryRepository(database), publisher, feed, settings.directory_apply_timeout_seconds)
    app = StreamApp(settings.otel_service_name, settings)
    agents.register(app, settings, directory)
    server = GrpcServer(
        settings,
        registrar(DirectoryServicer(directory, settings.platform_id)),
        ACCESS_POLICY,
        limited_streams=STREAMING_METHODS,
    )
    return Route(app=app, database=database, publisher=publisher, feed=feed, grpc=server)
