"""Composition root for the status service."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from importlib.resources import files

import grpc

from invoicing_common import topics
from invoicing_common.db import Database
from invoicing_common.grpc_server import GrpcServer
from invoicing_common.health import HealthMonitor, database_reachable, stream_alive
from invoicing_common.kafka import StreamApp, register_lag_gauge
from invoicing_common.kafka.outbox import OutboxRelay
from invoicing_common.platforms import load_registry
from invoicing_common.rules import load_book
from invoicing_common.schematron import artefacts_dir
from invoicing_status import agents, exchange_api, exchange_stage
from invoicing_status.api import ACCESS_POLICY, WATCH_METHOD, StatusServicer, registrar
from invoicing_status.backfill import PartiesBackfill
from invoicing_status.cdar_rules import CdarRules
from invoicing_status.exchange_api import EXCHANGE_POLICY, ExchangeServicer
from invoicing_status.exchange_client import ExchangeClient
from invoicing_status.exchange_stage import ExchangeStage
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
    # The exchange with other platforms: the rules its messages are
    # checked with, its client, and its stage (its own consumer group).
    cdar_rules: CdarRules
    exchange_client: ExchangeClient
    exchange: StreamApp


def bootstrap(settings: StatusSettings) -> StatusApp:
    database = Database(
        settings.database_url,
        schema="status",
        migrations=files("invoicing_status") / "migrations",
        command_timeout=settings.database_command_timeout_seconds,
    )
    queries = StatusQueries(database)
    relay = OutboxRelay(
        database,
        OUTBOX,
        settings,
        f"{settings.otel_service_name}-outbox",
        batch_size=settings.outbox_batch_size,
        linger_ms=settings.kafka_producer_linger_ms,
        seq_of=sequence_of,
        published_retention=None,  # Housekeeping prunes: watchers replay these rows
        topics=[topics.STATUS],
    )
    repository = StatusRepository(database, on_commit=relay.wake)
    app = StreamApp(settings.otel_service_name, settings)
    interval = settings.status_batch_interval_ms / 1000 if settings.status_batch_interval_ms >= 0 else None
    agents.register(
        app, repository, relay.wake, settings.status_batch_size, settings.status_batch_window_ms / 1000, interval
    )

    # Other platforms (PLATFORMS_FILE): read once, at start. Without any,
    # nothing is shared and the rules are compiled only if a message comes.
    registry = load_registry()
    cdar_rules = CdarRules(load_book(), artefacts_dir(), compile_at_start=bool(registry.peers))
    exchange_client = ExchangeClient(settings.exchange_call_timeout_seconds)
    # It reads every status event to pass on those of shared invoices.
    exchange = StreamApp(settings.exchange_group, settings, off_path=True)
    exchange_stage.register(
        exchange,
        ExchangeStage(queries, registry, cdar_rules, exchange_client, settings.platform_id, exchange.retry_pause),
    )
    register_lag_gauge(app, exchange)

    notifier = ChangeNotifier(database)
    status_servicer = registrar(StatusServicer(repository, queries, notifier))
    exchange_servicer = exchange_api.registrar(ExchangeServicer(registry, cdar_rules, repository, queries))

    def register_services(server: grpc.aio.Server) -> list[str]:
        return [*status_servicer(server), *exchange_servicer(server)]

    server = GrpcServer(
        settings,
        register_services,
        {**ACCESS_POLICY, **EXCHANGE_POLICY},
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
            server,
            [
                database_reachable(database, settings.health_database_grace_seconds),
                stream_alive(app),
                stream_alive(exchange),
            ],
        ),
        cdar_rules=cdar_rules,
        exchange_client=exchange_client,
        exchange=exchange,
    )
