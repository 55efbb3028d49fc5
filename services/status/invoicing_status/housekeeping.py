"""Pruning what serves only for a while, so that the status schema does not
grow for ever.

- ``processed_events``: the ids of consumed pipeline events, kept so that a
  redelivered record changes nothing. A record can only be redelivered while
  its topic keeps it (a week, deploy/kafka/topics.toml), so the ids are kept
  longer than that: ``STATUS_RETENTION_DAYS``, 30 by default.
- ``outbox`` rows once published: the status events WatchInvoices replays.
  A watch may resume from a position as old as the retention; an older one
  is refused (api.WatchInvoices), never silently skipped.

Deletes go in bounded batches, so no statement holds many rows locked.
Every status instance prunes; the deletes are the same, whoever runs them.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from mode import Service

from invoicing_common.db import Database
from invoicing_common.kafka.errors import is_transient

log = logging.getLogger(__name__)

BATCH = 5000


class Housekeeping(Service):
    def __init__(
        self, database: Database, retention: timedelta, interval_seconds: float = 600.0, **kwargs: object
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._database = database
        self.retention = retention
        self._interval = interval_seconds

    @Service.task
    async def _periodically(self) -> None:
        while not self.should_stop:
            try:
                events, outbox = await self.prune(datetime.now(UTC) - self.retention)
                if events or outbox:
                    log.info("housekeeping: pruned %d processed event id(s) and %d outbox row(s)", events, outbox)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning("housekeeping skipped this round: %s", exc)
            await self.sleep(self._interval)

    async def prune(self, before: datetime) -> tuple[int, int]:
        """Delete what is older than ``before``; returns (processed event ids,
        outbox rows) deleted."""
        events = 0
        while True:
            result = await self._database.pool.execute(
                "DELETE FROM processed_events WHERE event_id IN"
                " (SELECT event_id FROM processed_events WHERE processed_at < $1 LIMIT $2)",
                before,
                BATCH,
            )
            deleted = int(result.split()[-1])
            events += deleted
            if deleted < BATCH:
                break
        outbox = 0
        while True:
            async with self._database.pool.acquire() as conn, conn.transaction():
                # The watermark moves in the same transaction as the delete:
                # a watch never finds events gone without being told.
                row = await conn.fetchrow(
                    "WITH gone AS (DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox"
                    " WHERE published_at IS NOT NULL AND published_at < $1 LIMIT $2) RETURNING seq)"
                    " SELECT count(*) AS deleted, max(seq) AS through FROM gone",
                    before,
                    BATCH,
                )
                if row["deleted"]:
                    await conn.execute(
                        "INSERT INTO pruned_positions (through) VALUES ($1) ON CONFLICT (singleton)"
                        " DO UPDATE SET through = GREATEST(pruned_positions.through, EXCLUDED.through)",
                        row["through"],
                    )
            outbox += row["deleted"]
            if row["deleted"] < BATCH:
                return events, outbox
