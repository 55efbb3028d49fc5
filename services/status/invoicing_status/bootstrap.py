"""Composition root for the status service."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from importlib.resources import files

from invoicing_common import topics
from invoicing_common.db import Database
from invoicing_common.grpc_server import GrpcServer
from invoicing_common.health import HealthMonitor, database_reachable, stream_alive
from invoicing_common.kafka import StreamApp
from invoicing_common.kafka.outbox import OutboxRelay
from invoicing_status import agents
from invoicing_status.api import ACCESS_POLICY, WATCH_METHOD, StatusServicer, registrar
from invoicing_status.backfill import PartiesBackfill
from invoicing_status.housekeeping import Housekeeping
from invoicing_status.notifier import ChangeNotifier
from invoicing_status.outbox import OUTBOX, sequence_of
from invoicing_status.queries import StatusQueries
from invoicing_status.repository import StatusRepository
from invoicing_status.settings import StatusSettings


@dataclass
class StatusApp:
    app: StreamApp
    database: Database
    backfill: PartiesBackfill
    housekeeping: Housekeeping
    relay: OutboxRelay
    notifier: ChangeNotifier
    grpc: GrpcServer
    health: HealthMonitor


def bootstrap(settings: StatusSettings) -> StatusApp:
    database = Database(
        settings.database_url,
        schema="status",
        migrations=files("invoicing_status") / "migrations",
        command_timeout=settings.database_command_timeout_seconds,
    )
    repository = StatusRepository(database)
    relay = OutboxRelay(
        database,
        OUTBOX,
        settings,
        f"{settings.otel_service_name}-outbox",
        batch_size=settings.outbox_batch_size,
        seq_of=sequence_of,
        published_retention=None,  # Housekeeping prunes: watchers replay these rows
        topics=[topics.STATUS],
    )
    app = StreamApp(settings.otel_service_name, settings)
    interval = settings.status_batch_interval_ms / 1000 if settings.status_batch_interval_ms >= 0 else None
    agents.register(
        app, repository, relay.wake, settings.status_batch_size, settings.status_batch_window_ms / 1000, interval
    )
    notifier = ChangeNotifier(database)
    server = GrpcServer(
        settings,
        registrar(StatusServicer(repository, StatusQueries(database), notifier)),
        ACCESS_POLICY,
        limited_streams=frozenset({WATCH_METHOD}),
    )
    return StatusApp(
        app=app,
        database=database,
        backfill=PartiesBackfill(database),
        housekeeping=Housekeeping(database, timedelta(days=settings.status_retention_days)),
        relay=relay,
        notifier=notifier,
        grpc=server,
        health=HealthMonitor(
            server, [database_reachable(database, settings.health_database_grace_seconds), stream_alive(app)]
        ),
    )
