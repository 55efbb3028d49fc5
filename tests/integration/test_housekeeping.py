"""Housekeeping prunes processed event ids and published outbox rows by age,
in a schema of its own (the status migrations applied to a fresh schema),
and a watch that asks for pruned positions is told, not shortchanged."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from invoicing_common.db import Database
from invoicing_status.housekeeping import BATCH, Housekeeping
from invoicing_status.queries import StatusQueries
from tests.support import Stack, scratch_database

pytestmark = pytest.mark.stack

NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=40)


@pytest.fixture
async def database(stack: Stack) -> AsyncIterator[Database]:
    async with scratch_database(stack.database_url, "status_hk", "invoicing_status") as db:
        yield db


async def _history(db: Database, published: list[datetime | None]) -> list[int]:
    """One invoice whose transitions were published at the given times
    (None: not yet); returns their positions."""
    invoice = str(uuid.uuid4())
    async with db.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO invoices (invoice_id, status_code, updated_at) VALUES ($1, 200, now())", invoice
        )
        seqs = []
        for i, at in enumerate(published):
            seq = await conn.fetchval(
                "INSERT INTO status_history (invoice_id, status_code, actor, occurred_at, source_event_id)"
                " VALUES ($1, 200, 'test', now(), $2) RETURNING seq",
                invoice,
                f"e{i}",
            )
            await conn.execute(
                "INSERT INTO outbox (seq, invoice_id, payload, published_at) VALUES ($1, $2, '', $3)", seq, invoice, at
            )
            seqs.append(seq)
    return seqs


async def test_old_ids_and_published_events_go_the_rest_stays(database: Database) -> None:
    async with database.pool.acquire() as conn:
        await conn.executemany(
            "INSERT INTO processed_events (event_id, processed_at) VALUES ($1, $2)",
            [(f"old-{i}", OLD) for i in range(BATCH + 7)] + [("recent", NOW)],
        )
    old = await _history(database, [OLD, OLD])
    unpublished = await _history(database, [None])  # old or not, it must be published first
    recent = await _history(database, [NOW])

    events, outbox = await Housekeeping(database, timedelta(days=30)).prune(NOW - timedelta(days=30))

    # More than one batch of ids: the loop goes on until none is left.
    assert (events, outbox) == (BATCH + 7, 2)
    async with database.pool.acquire() as conn:
        assert [r["event_id"] for r in await conn.fetch("SELECT event_id FROM processed_events")] == ["recent"]
        kept = {r["seq"] for r in await conn.fetch("SELECT seq FROM outbox")}
        # The history itself is the invoices' record: never pruned.
        assert await conn.fetchval("SELECT count(*) FROM status_history") == 4
    assert kept == {*unpublished, *recent}
    # A watch from before the pruned positions is refused; from the last one, it is served.
    queries = StatusQueries(database)
    assert await queries.pruned_through() == max(old)
    assert await Housekeeping(database, timedelta(days=30)).prune(NOW - timedelta(days=30)) == (0, 0)
    assert await queries.pruned_through() == max(old)


async def test_nothing_pruned_means_every_position_can_be_resumed(database: Database) -> None:
    await _history(database, [NOW])
    assert await StatusQueries(database).pruned_through() == 0
