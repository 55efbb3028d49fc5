"""Wakes watchers when new status history is committed (any instance):
PostgreSQL NOTIFY on the outbox channel, fanned out in-process."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg  # type: ignore[import-untyped]
from mode import Service

from invoicing_common.db import Database
from invoicing_common.kafka.errors import is_transient
from invoicing_status.records import OUTBOX_CHANNEL

log = logging.getLogger(__name__)


class ChangeNotifier(Service):
    def __init__(self, database: Database, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._database = database
        self._changed = asyncio.Event()

    def notify(self) -> None:
        # Broadcast: wake everyone waiting on the current event, then arm a
        # fresh one for the next wait.
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for_change(self, timeout: float) -> None:
        """Return on the next change, or after ``timeout`` seconds (a safety
        net: watchers re-query either way, so a missed NOTIFY only delays)."""
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), timeout)

    @Service.task
    async def _listen(self) -> None:
        while not self.should_stop:
            conn: asyncpg.Connection | None = None
            try:
                conn = await self._database.connect()
                await conn.add_listener(OUTBOX_CHANNEL, lambda *_: self.notify())
                while not self.should_stop:
                    await self.sleep(5.0)
                    await conn.execute("SELECT 1")  # detects a dead connection
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning("change listener reconnecting: %s", exc)
                await self.sleep(1.0)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()
