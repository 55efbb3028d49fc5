"""The stream runtime on the real broker: each record handled, what it
produced acknowledged before its offset is committed, poison sent to the
DLQ, batches bounded, and a new member of the group resuming after the last
commit without handling anything again."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # type: ignore[import-untyped]
from invoicing.v1 import events_pb2

from invoicing_common import topics
from invoicing_common.kafka import PermanentError, Record, StreamApp, ensure_topics, send
from invoicing_common.settings import KafkaClientSettings, ServiceSettings
from tests.support import Stack, records_for_key

pytestmark = pytest.mark.stack

PARTITIONS = 3


async def _fresh_topics(kafka: KafkaClientSettings) -> tuple[str, str]:
    run = uuid.uuid4().hex[:10]
    source, sink = f"test.streams.{run}.in", f"test.streams.{run}.out"
    await ensure_topics(kafka, PARTITIONS, [source, sink])
    return source, sink


async def _produce(kafka: KafkaClientSettings, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(**kafka.kafka_client_kwargs(), acks="all")
    await producer.start()
    try:
        for i, value in enumerate(values):
            await producer.send_and_wait(topic, value=value, key=f"k{i % 7}".encode())
    finally:
        await producer.stop()


async def _values(kafka: KafkaClientSettings, topic: str) -> list[bytes]:
    found: list[bytes] = []
    for i in range(7):
        found.extend(r.value for r in await records_for_key(kafka, topic, f"k{i}"))
    return found


async def _committed_is_end(kafka: KafkaClientSettings, group: str, topic: str) -> bool:
    consumer = AIOKafkaConsumer(**kafka.kafka_client_kwargs(), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        ends = await consumer.end_offsets(tps)
        committed = {tp: await consumer.committed(tp) or 0 for tp in tps}
        return bool(committed == ends)
    finally:
        await consumer.stop()


async def _until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)  # polling a condition, bounded by the deadline


def _app(stack: Stack, group: str) -> StreamApp:
    return StreamApp(group, ServiceSettings(**stack.kafka_fields(), kafka_fetch_max_wait_ms=50))


def _upper_into(sink_of: StreamApp, sink: str, handled: list[bytes]) -> Callable[[Record], Awaitable[None]]:
    out = sink_of.topic(sink)

    async def handle(record: Record) -> None:
        assert record.value is not None
        if record.value == b"poison":
            raise PermanentError("cannot use this record")
        handled.append(record.value)
        await send(out, (record.key or b"").decode(), record.value.upper())

    return handle


async def test_records_are_handled_committed_and_not_handled_again(stack: Stack) -> None:
    source, sink = await _fresh_topics(stack.kafka)
    group = f"test-streams-{uuid.uuid4().hex[:8]}"
    first: list[bytes] = []
    app = _app(stack, group)
    app.consume(source, handler=_upper_into(app, sink, first), concurrency=4)
    await app.start()
    try:
        values = [f"v{i}".encode() for i in range(30)]
        await _produce(stack.kafka, source, [*values[:10], b"poison", *values[10:]])
        await _until(lambda: len(first) == 30, "30 records handled")
    finally:
        await app.stop()
    assert sorted(first) == sorted(values)
    assert sorted(await _values(stack.kafka, sink)) == sorted(v.upper() for v in values)
    assert await _committed_is_end(stack.kafka, group, source)
    letters = [
        events_pb2.DeadLetter.FromString(r.value)
        for r in await records_for_key(stack.kafka, topics.DLQ, "k3")
        if events_pb2.DeadLetter.FromString(r.value).source_topic == source
    ]
    assert [(d.value, d.error_type, d.consumer_group) for d in letters] == [(b"poison", "PermanentError", group)]

    # A new member of the group starts from the commits: only new records.
    second: list[bytes] = []
    again = _app(stack, group)
    again.consume(source, handler=_upper_into(again, sink, second))
    await again.start()
    try:
        await _produce(stack.kafka, source, [b"w1", b"w2", b"w3"])
        await _until(lambda: len(second) == 3, "3 new records handled")
    finally:
        await again.stop()
    assert sorted(second) == [b"w1", b"w2", b"w3"]
    assert await _committed_is_end(stack.kafka, group, source)


async def test_records_not_selected_are_committed_without_reaching_the_handler(stack: Stack) -> None:
    source, sink = await _fresh_topics(stack.kafka)
    group = f"test-streams-{uuid.uuid4().hex[:8]}"
    handled: list[bytes] = []
    asked: list[bytes] = []

    def even(record: Record) -> bool:
        assert record.value is not None
        asked.append(record.value)
        if record.value == b"poison":
            raise ValueError("cannot tell")  # counts as selected: the handler decides
        return int(record.value[1:]) % 2 == 0

    app = _app(stack, group)
    app.consume(source, handler=_upper_into(app, sink, handled), concurrency=2, select=even)
    await app.start()
    try:
        values = [f"s{i}".encode() for i in range(20)]
        await _produce(stack.kafka, source, [*values, b"poison"])
        await _until(lambda: len(asked) == 21, "every record looked at")
        await _until(lambda: len(handled) == 10, "the even records handled")
        await _until_committed_end(stack.kafka, group, source)
    finally:
        await app.stop()
    assert sorted(handled) == sorted(v for v in values if int(v[1:]) % 2 == 0)
    assert sorted(await _values(stack.kafka, sink)) == sorted(v.upper() for v in handled)
    letters = [
        events_pb2.DeadLetter.FromString(r.value)
        for r in await records_for_key(stack.kafka, topics.DLQ, "k6")
        if events_pb2.DeadLetter.FromString(r.value).source_topic == source
    ]
    assert [d.value for d in letters] == [b"poison"]


async def _until_committed_end(kafka: KafkaClientSettings, group: str, topic: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not await _committed_is_end(kafka, group, topic):
        assert time.monotonic() < deadline, f"timed out waiting for {group}'s commits to reach the end of {topic}"
        await asyncio.sleep(0.2)  # polling the broker's commits, bounded by the deadline


def _collecting() -> tuple[list[list[bytes]], Callable[[list[Record]], Awaitable[None]]]:
    """A batch handler that keeps each batch's values, and what it kept."""
    batches: list[list[bytes]] = []

    async def handle(records: list[Record]) -> None:
        batches.append([r.value or b"" for r in records])

    return batches, handle


async def test_batches_are_bounded_and_committed(stack: Stack) -> None:
    source, _sink = await _fresh_topics(stack.kafka)
    group = f"test-streams-{uuid.uuid4().hex[:8]}"
    batches, handle = _collecting()
    app = _app(stack, group)
    app.consume_batches(source, handler=handle, batch_size=10, batch_window=0.05)
    await app.start()
    try:
        values = [f"b{i}".encode() for i in range(25)]
        await _produce(stack.kafka, source, values)
        await _until(lambda: sum(map(len, batches)) == 25, "25 records in batches")
    finally:
        await app.stop()
    assert all(0 < len(b) <= 10 for b in batches)
    assert sorted(v for b in batches for v in b) == sorted(values)
    assert await _committed_is_end(stack.kafka, group, source)


def _fetch_sent(app: StreamApp) -> tuple[int, int]:
    """What the consumer's next fetch request asks the broker for."""
    fetcher = app.consumer._fetcher
    return fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms


async def test_a_batch_consumer_fetches_at_the_pace_records_come(stack: Stack) -> None:
    source, _sink = await _fresh_topics(stack.kafka)
    group = f"test-streams-{uuid.uuid4().hex[:8]}"
    batches, handle = _collecting()
    settings = ServiceSettings(
        **stack.kafka_fields(),
        kafka_fetch_min_bytes=1,
        kafka_fetch_max_wait_ms=500,
        kafka_batch_fetch_min_bytes=32 * 1024,
        kafka_batch_fetch_max_wait_ms=200,
    )
    app = StreamApp(group, settings)
    app.consume_batches(source, handler=handle, batch_size=500, batch_window=0.05)
    await app.start()
    try:
        pace = app.fetch_pace
        assert pace is not None and pace.busy  # it may start on a backlog
        # Nothing comes: it turns to the quiet fetch (from 1 byte, long-polling).
        await _until(lambda: not pace.busy, "an idle consumer's quiet fetch")
        assert _fetch_sent(app) == (1, 500)
        # A burst: far more than one record per 200 ms wait, so it batches.
        values = [f"p{i}".encode() for i in range(100)]
        await _produce(stack.kafka, source, values)
        await _until(lambda: pace.busy and _fetch_sent(app) == (32 * 1024, 200), "the batch fetch under a burst")
        await _until(lambda: sum(map(len, batches)) == 100, "100 records handled")
        # And quiet again once the burst is over.
        await _until(lambda: not pace.busy and _fetch_sent(app) == (1, 500), "the quiet fetch after the burst")
    finally:
        await app.stop()
    assert sorted(v for b in batches for v in b) == sorted(values)


async def test_a_quiet_batch_consumer_hands_each_record_over_at_once(stack: Stack) -> None:
    source, _sink = await _fresh_topics(stack.kafka)
    group = f"test-streams-{uuid.uuid4().hex[:8]}"
    batches, handle = _collecting()
    app = StreamApp(group, ServiceSettings(**stack.kafka_fields(), kafka_batch_fetch_max_wait_ms=200))
    # A window and an interval no test could wait out: a record that waited
    # for either would never be handled here.
    app.consume_batches(source, handler=handle, batch_size=500, batch_window=600, batch_interval=600)
    await app.start()
    try:
        pace = app.fetch_pace
        assert pace is not None
        await _until(lambda: not pace.busy, "an idle consumer's quiet fetch")
        await _produce(stack.kafka, source, [b"first"])
        await _until(lambda: len(batches) == 1, "the first record handled")
        # Within the interval of the first batch: handled at once all the same.
        await _produce(stack.kafka, source, [b"second"])
        await _until(lambda: len(batches) == 2, "the second record handled")
    finally:
        await app.stop()
    assert batches == [[b"first"], [b"second"]]


async def test_stopping_finishes_and_commits_the_records_in_hand(stack: Stack) -> None:
    source, sink = await _fresh_topics(stack.kafka)
    group = f"test-streams-{uuid.uuid4().hex[:8]}"
    entered, release = asyncio.Event(), asyncio.Event()
    app = _app(stack, group)
    out = app.topic(sink)

    async def handle(record: Record) -> None:
        entered.set()
        await release.wait()
        await send(out, "k0", (record.value or b"").upper())

    app.consume(source, handler=handle)
    await app.start()
    await _produce(stack.kafka, source, [b"slow"])
    await asyncio.wait_for(entered.wait(), timeout=60)
    stopping = asyncio.ensure_future(app.stop())
    # Released only once the consume loop has ended: the record can then be
    # finished and committed by nothing but the stop itself.
    await _until(lambda: app.should_stop and not app.consuming, "the consume loop to end")
    release.set()
    await asyncio.wait_for(stopping, timeout=60)
    assert await _values(stack.kafka, sink) == [b"SLOW"]
    assert await _committed_is_end(stack.kafka, group, source)
