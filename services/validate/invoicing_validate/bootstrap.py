"""Composition root for the validate service."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from mode import Service

from invoicing_common.archive.postgres import open_archive
from invoicing_common.db import Database
from invoicing_common.grpc_server import GrpcServer
from invoicing_common.health import Check, HealthMonitor, database_reachable, stream_alive
from invoicing_common.kafka import StreamApp
from invoicing_common.rules import load_book
from invoicing_validate import agents, checks
from invoicing_validate.settings import ValidateSettings
from invoicing_validate.validation.engine import ENV_RULES_SHADOW
from invoicing_validate.workers import WorkerPool

log = logging.getLogger(__name__)


def workers_alive(pool: WorkerPool) -> Check:
    """At least one validation worker can take a document (all dead and not
    yet replaced: NOT_SERVING until one is back)."""

    async def probe() -> bool:
        return pool.alive > 0

    return Check("validation workers", probe)


@dataclass
class Validate:
    database: Database
    # The object-store client, when the archive keeps its bytes in S3.
    archive: list[Service]
    app: StreamApp
    pool: WorkerPool
    health: HealthMonitor
    grpc: GrpcServer


def bootstrap(settings: ValidateSettings) -> Validate:
    # Validate reads documents from the archive (and adds the attachments
    # it extracts); ingest owns the archive's tables (docs/archive.md).
    database = Database(
        settings.database_url,
        schema="validate",
        command_timeout=settings.database_command_timeout_seconds,
        # Its statements read and write the archive by hash.
        generic_plans=True,
    )
    archive, archive_services = open_archive(database, settings)
    shadow = settings.validate_rules_shadow.strip()
    if shadow:
        # An unknown release stops the service here, not in every worker.
        load_book().get(shadow)
        log.info("French rules release %s runs in shadow", shadow)
    # The workers build their validator from the environment they inherit.
    os.environ[ENV_RULES_SHADOW] = shadow
    app = StreamApp(settings.otel_service_name, settings)
    pool = WorkerPool(settings.validate_workers, warm_up=checks.warm_up)
    agents.register(
        app,
        pool,
        archive,
        settings.validate_concurrency,
        settings.validate_time_limit_seconds,
        settings.validate_attempts,
    )
    # Health and reflection only: no method needs a policy.
    server = GrpcServer(settings, lambda _server: [], policy={})
    health = HealthMonitor(
        server,
        [
            workers_alive(pool),
            stream_alive(app),
            database_reachable(database, settings.health_database_grace_seconds),
        ],
    )
    return Validate(database=database, archive=archive_services, app=app, pool=pool, health=health, grpc=server)
