"""The transactional outbox on the real broker and database: rows are
published in order with their row in a header, once each, by one leader;
a new leader finds what a dead one published but did not mark, and does
not publish it again."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # type: ignore[import-untyped]

from invoicing_common.db import Database
from invoicing_common.kafka import ensure_topics
from invoicing_common.kafka.outbox import (
    OUTBOX_HEADER,
    OutboxMessage,
    OutboxRelay,
    OutboxTable,
    insert,
    record_headers,
)
from invoicing_common.settings import KafkaClientSettings
from tests.support import Stack, scratch_database

pytestmark = pytest.mark.stack


@pytest.fixture
async def database(stack: Stack) -> AsyncIterator[Database]:
    # The route service's migrations give a fresh schema an outbox table of
    # the shared shape (with positions).
    async with scratch_database(stack.database_url, "outbox", "invoicing_route") as db:
        yield db


async def _topic(kafka: KafkaClientSettings) -> str:
    name = f"test.outbox.{uuid.uuid4().hex[:10]}"
    await ensure_topics(kafka, 1, [name])
    return name


async def _read(kafka: KafkaClientSettings, topic: str) -> list[tuple[bytes, dict[str, bytes]]]:
    consumer = AIOKafkaConsumer(**kafka.kafka_client_kwargs(), enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        consumer.seek(tp, 0)
        out: list[tuple[bytes, dict[str, bytes]]] = []
        while await consumer.position(tp) < end:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                out += [(r.value, dict(r.headers)) for r in records]
        return out
    finally:
        await consumer.stop()


async def _until(condition: Callable[[], object], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():  # type: ignore[misc]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)  # polling a condition, bounded by the deadline


def _table(source: str) -> OutboxTable:
    return OutboxTable(source=source, channel=f"test_{source}", keep_published=True, positions=True)


async def _write(database: Database, table: OutboxTable, topic: str, values: list[bytes]) -> list[int]:
    async with database.pool.acquire() as conn, conn.transaction():
        return await insert(conn, table, [OutboxMessage(topic, b"k", v) for v in values])


async def _pending(database: Database) -> int:
    return int(await database.pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL"))


async def test_rows_are_published_once_in_order_by_one_leader(stack: Stack, database: Database) -> None:
    topic = await _topic(stack.kafka)
    table = _table(f"t{uuid.uuid4().hex[:8]}")
    relays = [OutboxRelay(database, table, stack.kafka, f"test-relay-{i}", batch_size=7) for i in range(2)]
    for relay in relays:
        await relay.start()
    try:
        seqs: list[int] = []
        for chunk in range(5):
            seqs += await _write(database, table, topic, [f"v{chunk}-{i}".encode() for i in range(10)])

        async def all_published() -> bool:
            return await _pending(database) == 0

        await _until(all_published, "every row published")
        offsets = await relays[0].published_offsets(seqs, timeout=10)
    finally:
        for relay in relays:
            await relay.stop()
    records = await _read(stack.kafka, topic)
    assert [v for v, _ in records] == [f"v{c}-{i}".encode() for c in range(5) for i in range(10)]
    assert [h[OUTBOX_HEADER] for _, h in records] == [f"{table.source}:{s}".encode() for s in seqs]
    assert offsets == {0: 49}
    # One leader at a time: the other published nothing.
    assert sorted(r.published for r in relays) == [0, 50]


async def test_a_new_leader_marks_what_the_dead_one_published_and_sends_it_again_never(
    stack: Stack, database: Database
) -> None:
    topic = await _topic(stack.kafka)
    table = _table(f"t{uuid.uuid4().hex[:8]}")
    seqs = await _write(database, table, topic, [b"a", b"b", b"c", b"d"])
    # A leader that died between the broker's acknowledgement and marking
    # the rows: a and b are on the topic, their rows still pending.
    producer = AIOKafkaProducer(**stack.kafka.kafka_client_kwargs(), acks="all")
    await producer.start()
    try:
        for seq, value in zip(seqs[:2], [b"a", b"b"], strict=True):
            await producer.send_and_wait(topic, value=value, key=b"k", headers=record_headers(table.source, seq))
    finally:
        await producer.stop()
    relay = OutboxRelay(database, table, stack.kafka, "test-relay")
    await relay.start()
    try:

        async def all_published() -> bool:
            return await _pending(database) == 0

        await _until(all_published, "every row published")
    finally:
        await relay.stop()
    assert [v for v, _ in await _read(stack.kafka, topic)] == [b"a", b"b", b"c", b"d"]
    assert relay.published == 2


async def test_insert_notifies_the_channel_at_commit_only(stack: Stack, database: Database) -> None:
    """The relays of other instances are woken by the insert's notification
    (sent in the insert's own round trip): it arrives once the writer
    commits, never before, and never for rows rolled back."""
    table = _table(f"n{uuid.uuid4().hex[:8]}")
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = await database.connect()
    try:
        await listener.add_listener(table.channel, lambda _c, _pid, channel, _payload: heard.put_nowait(channel))
        async with database.pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            seqs = await insert(conn, table, [OutboxMessage("t", b"k", b"a"), OutboxMessage("t", b"k", b"b")])
            assert seqs == sorted(seqs) and len(seqs) == 2
            # A round trip on the listener's connection delivers whatever
            # notifications were already sent to it.
            await listener.fetchval("SELECT 1")
            assert heard.empty()
            await transaction.rollback()
            await listener.fetchval("SELECT 1")
            assert heard.empty()
            async with conn.transaction():
                await insert(conn, table, [OutboxMessage("t", b"k", b"c")])
        assert await asyncio.wait_for(heard.get(), timeout=30) == table.channel
    finally:
        await listener.close()


async def test_dedicated_connections_take_the_settings_asked_for(database: Database) -> None:
    """A relay's connection (generic plans, commits not waiting for the
    WAL's flush: a lost mark is reconciled, as above) against the default."""
    settings = "SELECT current_setting('plan_cache_mode'), current_setting('synchronous_commit')"
    relay_like = await database.connect(generic_plans=True, flushed_commits=False)
    default = await database.connect()
    try:
        assert tuple(await relay_like.fetchrow(settings)) == ("force_generic_plan", "off")
        assert tuple(await default.fetchrow(settings)) == ("auto", "on")
    finally:
        await relay_like.close()
        await default.close()
