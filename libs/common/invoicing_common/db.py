"""asyncpg pool with migrations applied at start."""

from __future__ import annotations

import asyncio
import logging
import zlib
from importlib.resources.abc import Traversable

import asyncpg  # type: ignore[import-untyped]
from mode import Service

log = logging.getLogger(__name__)


async def apply_migrations(conn: asyncpg.Connection, schema: str, folder: Traversable) -> list[str]:
    """Apply ``NNN_name.sql`` files of ``folder`` not yet recorded in ``schema``.

    An advisory lock serialises concurrent starts of several instances; each
    file runs in its own transaction with its bookkeeping row.
    """
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    applied: list[str] = []
    # A stable key (hash() is salted per process) shared by every instance.
    lock_key = zlib.crc32(f"invoicing-migrations:{schema}".encode()) & 0x7FFFFFFF
    await conn.execute("SELECT pg_advisory_lock($1)", lock_key)
    try:
        # A service's role owns its schema but may not create one (that
        # needs CREATE on the database, which it is not granted), and
        # PostgreSQL checks that right even for CREATE SCHEMA IF NOT EXISTS.
        if not await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema):
            await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{schema}".schema_migrations '
            "(name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["name"] for r in await conn.fetch(f'SELECT name FROM "{schema}".schema_migrations')}
        for f in files:
            if f.name in done:
                continue
            async with conn.transaction():
                await conn.execute(f'SET LOCAL search_path TO "{schema}", public; {f.read_text()}')
                await conn.execute(f'INSERT INTO "{schema}".schema_migrations(name) VALUES ($1)', f.name)
            applied.append(f.name)
            log.info("applied migration %s.%s", schema, f.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", lock_key)
    return applied


async def _reset_if_in_transaction(conn: asyncpg.Connection) -> None:
    """Pool release hook. asyncpg's default reset costs a round trip on every
    release (unlock all advisory locks, close cursors, UNLISTEN, RESET ALL).
    Pooled connections here hold no session state: advisory locks are
    transaction-scoped (or released explicitly, as by the migrations),
    LISTEN and the outbox leader lock use dedicated connections, settings
    are SET LOCAL. Only a connection left inside a transaction is reset,
    which rolls it back."""
    if conn.is_in_transaction():
        await conn.reset()


# How long one statement may take before it fails with a TimeoutError.
DEFAULT_COMMAND_TIMEOUT_SECONDS = 30.0


class Database(Service):
    """Owns the pool; ``pool`` is usable once the service has started."""

    def __init__(
        self,
        dsn: str,
        schema: str,
        migrations: Traversable | None = None,
        min_size: int = 2,
        max_size: int = 10,
        command_timeout: float | None = DEFAULT_COMMAND_TIMEOUT_SECONDS,
        *,
        generic_plans: bool = False,
        **kwargs: object,
    ) -> None:
        """``generic_plans``: every prepared statement runs on its generic
        plan, planned once per connection (``plan_cache_mode``). For a
        service whose statements all look rows up by key or write arrays
        of them: PostgreSQL otherwise plans such a statement again at each
        execution (a custom plan knows the arrays' lengths, so it looks
        cheaper than the generic one), and ingest's one-statement write
        spent as long in planning as in execution (docs/performance.md).
        Not for a service with ad hoc filters, whose plans depend on the
        values (status's listings)."""
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._generic_plans = generic_plans
        self._command_timeout = command_timeout
        self._dsn = dsn
        self._schema = schema
        self._migrations = migrations
        self._min_size = min_size
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None

    @property
    def dsn(self) -> str:
        return self._dsn

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("database not started")
        return self._pool

    def _server_settings(self, generic_plans: bool = False) -> dict[str, str]:
        settings = {"search_path": f"{self._schema},public", "application_name": self._schema}
        if self._generic_plans or generic_plans:
            settings["plan_cache_mode"] = "force_generic_plan"
        return settings

    async def connect(self, *, generic_plans: bool = False, flushed_commits: bool = True) -> asyncpg.Connection:
        """A dedicated connection (e.g. for LISTEN), outside the pool.
        ``generic_plans``: as the constructor's, for this connection.
        ``flushed_commits=False``: its commits return before their WAL is
        flushed (``synchronous_commit = off``), for writes that a crash may
        lose because they are found again (an outbox relay's marks): the
        database stays consistent, the last fraction of a second of them
        is what can go."""
        settings = self._server_settings(generic_plans)
        if not flushed_commits:
            settings["synchronous_commit"] = "off"
        return await asyncpg.connect(self._dsn, server_settings=settings)

    async def on_start(self) -> None:
        delay = 0.2
        for attempt in range(1, 31):
            try:
                self._pool = await asyncpg.create_pool(
                    self._dsn,
                    min_size=self._min_size,
                    max_size=self._max_size,
                    server_settings=self._server_settings(),
                    reset=_reset_if_in_transaction,
                    # A statement that hangs (a lock never released, a server
                    # that stopped answering) fails as a TimeoutError, which
                    # the stream runtime retries, instead of holding a
                    # partition for ever.
                    command_timeout=self._command_timeout,
                )
                break
            except (OSError, asyncpg.PostgresError) as exc:
                # The database may still be starting; back off and say so.
                log.warning("database not reachable (attempt %d): %s", attempt, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        else:
            raise RuntimeError("database unreachable after 30 attempts")
        if self._migrations is not None:
            async with self.pool.acquire() as conn:
                await apply_migrations(conn, self._schema, self._migrations)

    async def on_stop(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
