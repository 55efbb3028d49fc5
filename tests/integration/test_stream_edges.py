"""The stream runtime's edges, on the real broker: when an offset may be
committed, what happens to fetched records when partitions are revoked,
and what a record whose output or dead letter cannot be written does.

Each test would pass on a runtime that only reaches the right end state by
luck; they look at the order of events instead: commits sent while outputs
are unacknowledged, records dispatched after a revocation.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from invoicing.v1 import events_pb2

from invoicing_common.kafka import PermanentError, Record, StreamApp, send
from invoicing_common.kafka.consume import HandlingFailed
from invoicing_common.settings import KafkaClientSettings, ServiceSettings
from tests.support import Stack

pytestmark = pytest.mark.stack


async def _topics(kafka: KafkaClientSettings, partitions: int, **max_bytes: int) -> dict[str, str]:
    """Fresh topics named by the keywords' names (value: max.message.bytes,
    0 for the broker's default), plus ``source`` and ``sink``."""
    run = uuid.uuid4().hex[:10]
    wanted = {"source": 0, "sink": 0, "dlq": 0, **max_bytes}
    names = {role: f"test.edges.{run}.{role}" for role in wanted}
    admin = AIOKafkaAdminClient(**kafka.kafka_client_kwargs())
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(names[role], partitions, 1, topic_configs={"max.message.bytes": str(size)} if size else {})
                for role, size in wanted.items()
            ]
        )
    finally:
        await admin.close()
    return names


async def _produce(kafka: KafkaClientSettings, topic: str, values: list[bytes], partition: int | None = None) -> None:
    producer = AIOKafkaProducer(**kafka.kafka_client_kwargs(), acks="all", max_request_size=8 * 1024 * 1024)
    await producer.start()
    try:
        for i, value in enumerate(values):
            await producer.send_and_wait(topic, value=value, key=f"k{i}".encode(), partition=partition)
    finally:
        await producer.stop()


async def _committed(kafka: KafkaClientSettings, group: str, tps: list[TopicPartition]) -> dict[int, int | None]:
    consumer = AIOKafkaConsumer(**kafka.kafka_client_kwargs(), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return {tp.partition: await consumer.committed(tp) for tp in tps}
    finally:
        await consumer.stop()


async def _until_committed(kafka: KafkaClientSettings, group: str, tp: TopicPartition, offset: int) -> None:
    deadline = time.monotonic() + 60
    while (await _committed(kafka, group, [tp]))[tp.partition] != offset:
        assert time.monotonic() < deadline, f"timed out waiting for a commit at {offset}"
        await asyncio.sleep(0.1)  # polling the broker, bounded by the deadline


async def _until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)  # polling a condition, bounded by the deadline


def _app(stack: Stack, group: str, dlq: str, **settings: Any) -> StreamApp:
    app = StreamApp(
        group,
        ServiceSettings(**stack.kafka_fields(), kafka_fetch_max_wait_ms=50, **settings),
        dlq_topic=dlq,
    )
    app.retry_delay = 0.05
    # Commit at every turn of the loop: a premature commit cannot hide
    # behind the commit interval.
    app.commit_interval = 0.0
    return app


class _Spy:
    """Counts the loop's polls and keeps every commit it sends (the real
    calls go through)."""

    def __init__(self, app: StreamApp) -> None:
        self.polls = 0
        self.commits: list[dict[TopicPartition, int]] = []
        consumer = app.consumer
        getmany, commit = consumer.getmany, consumer.commit

        async def counting_getmany(*args: Any, **kwargs: Any) -> Any:
            self.polls += 1
            return await getmany(*args, **kwargs)

        async def keeping_commit(offsets: dict[TopicPartition, int] | None = None) -> None:
            self.commits.append(dict(offsets or {}))
            await commit(offsets)

        consumer.getmany = counting_getmany
        consumer.commit = keeping_commit


async def test_an_offset_is_committed_only_after_the_outputs_are_acknowledged(stack: Stack) -> None:
    names = await _topics(stack.kafka, 1)
    group = f"test-edges-{uuid.uuid4().hex[:8]}"
    app = _app(stack, group, names["dlq"])
    out = app.topic(names["sink"])
    handled: list[int] = []

    async def handle(record: Record) -> None:
        await send(out, "k", (record.value or b"").upper())
        handled.append(record.offset)

    app.consume(names["source"], handler=handle, concurrency=4)
    await app.start()
    # Every acknowledgement of the broker is held until the test lets it through.
    held: list[tuple[asyncio.Future[Any], asyncio.Future[Any]]] = []
    real_send = app.producer.send

    async def held_send(*args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        delivery = await real_send(*args, **kwargs)
        gate: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        held.append((delivery, gate))
        return gate

    app.producer.send = held_send
    spy = _Spy(app)
    source = TopicPartition(names["source"], 0)
    try:
        await _produce(stack.kafka, names["source"], [b"a", b"b", b"c", b"d", b"e"])
        await _until(lambda: len(handled) == 5 and len(held) == 5, "5 records handled, 5 sends held")
        # The broker has the outputs by now; only their acknowledgement is held.
        await asyncio.gather(*(delivery for delivery, _ in held))
        polls = spy.polls
        await _until(lambda: spy.polls >= polls + 3, "three more turns of the loop")
        assert not any(source in c for c in spy.commits), f"committed before the acknowledgements: {spy.commits}"
        assert (await _committed(stack.kafka, group, [source]))[0] is None

        for delivery, gate in held[:2]:
            gate.set_result(delivery.result())
        await _until(lambda: any(c.get(source) == 2 for c in spy.commits), "a commit up to the acknowledged two")
        assert all(c.get(source, 0) <= 2 for c in spy.commits)

        for delivery, gate in held[2:]:
            gate.set_result(delivery.result())
        await _until(lambda: any(c.get(source) == 5 for c in spy.commits), "a commit of all five")
    finally:
        await app.stop()
    assert (await _committed(stack.kafka, group, [source]))[0] == 5


async def test_a_record_whose_dead_letter_cannot_be_written_is_never_committed_past(stack: Stack) -> None:
    # The DLQ takes nothing over 1 KiB: the poison record's dead letter is
    # refused for good, so its handling fails outright.
    names = await _topics(stack.kafka, 1, dlq=1024)
    group = f"test-edges-{uuid.uuid4().hex[:8]}"
    app = _app(stack, group, names["dlq"])
    handled: list[int] = []

    async def handle(record: Record) -> None:
        if (record.value or b"").startswith(b"poison"):
            raise PermanentError("cannot use this record")
        handled.append(record.offset)

    app.consume(names["source"], handler=handle)
    source = TopicPartition(names["source"], 0)
    await app.start()
    try:
        await _produce(stack.kafka, names["source"], [b"ok0", b"ok1", b"poison" + b"x" * 4096, b"ok3", b"ok4"])
        await _until(lambda: app.crashed, "the stream to stop on the failed handling")
        assert isinstance(app.crash_reason, HandlingFailed)
    finally:
        await app.stop()
    assert {0, 1} <= set(handled)
    # Committed up to the poison record, never past it: its partition's
    # next owner meets it again.
    assert (await _committed(stack.kafka, group, [source]))[0] == 2


async def test_an_output_the_broker_refuses_for_good_sends_its_source_to_the_dlq(stack: Stack) -> None:
    # The sink takes nothing over 8 KiB: retrying the send could never work.
    # (As in production, the refused record is larger than a producer batch,
    # 16 KiB, so it travels alone and its neighbours are not refused with it.)
    names = await _topics(stack.kafka, 1, sink=8192)
    group = f"test-edges-{uuid.uuid4().hex[:8]}"
    app = _app(stack, group, names["dlq"])
    out = app.topic(names["sink"])
    handled: list[bytes] = []

    async def handle(record: Record) -> None:
        value = record.value or b""
        await send(out, "k", value * (20_000 if value == b"big" else 1))
        handled.append(value)

    app.consume(names["source"], handler=handle)
    source = TopicPartition(names["source"], 0)
    await app.start()
    try:
        await _produce(stack.kafka, names["source"], [b"a", b"big", b"c"])
        await _until(lambda: b"c" in handled, "the record after the too-large one handled")
        await _until_committed(stack.kafka, group, source, 3)
    finally:
        await app.stop()
    assert (await _committed(stack.kafka, group, [source]))[0] == 3
    letters = await _read_all(stack.kafka, names["dlq"])
    assert len(letters) == 1
    letter = events_pb2.DeadLetter.FromString(letters[0])
    assert (letter.source_offset, letter.value, letter.error_type) == (1, b"big", "MessageSizeTooLargeError")


async def _read_all(kafka: KafkaClientSettings, topic: str) -> list[bytes]:
    consumer = AIOKafkaConsumer(**kafka.kafka_client_kwargs(), enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        values: list[bytes] = []
        while await consumer.position(tp) < end:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                values.extend(r.value for r in records)
        return values
    finally:
        await consumer.stop()


def _has_partitions(app: StreamApp) -> bool:
    return bool(app.assignment())


class _Watched(StreamApp):
    """Notes when its partitions are revoked, in the order of its handling."""

    def __init__(self, *args: Any, journal: list[tuple[str, Any]], on_revoke: Callable[[], None], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._journal = journal
        self._on_revoke = on_revoke

    async def partitions_revoked(self, revoked: Any) -> None:
        revoked = list(revoked)
        if revoked:  # the first join revokes nothing
            self._journal.append(("revoked", sorted(tp.partition for tp in revoked)))
            self._on_revoke()
        await super().partitions_revoked(revoked)


async def test_nothing_fetched_before_a_revocation_is_dispatched_after_it(stack: Stack) -> None:
    names = await _topics(stack.kafka, 2)
    group = f"test-edges-{uuid.uuid4().hex[:8]}"
    settings = ServiceSettings(**stack.kafka_fields(), kafka_fetch_max_wait_ms=50, kafka_session_timeout_seconds=6)
    journal: list[tuple[str, Any]] = []
    release = asyncio.Event()
    first = _Watched(group, settings, dlq_topic=names["dlq"], journal=journal, on_revoke=release.set)
    second_handled: list[tuple[int, int]] = []

    async def slow(record: Record) -> None:
        # The first record holds the only slot until the rebalance: the
        # rest of the fetch waits, undispatched, across the revocation.
        journal.append(("handled", (record.partition, record.offset)))
        await release.wait()

    async def quick(record: Record) -> None:
        second_handled.append((record.partition, record.offset))

    first.consume(names["source"], handler=slow, concurrency=1)
    per_partition = 40
    await _produce(stack.kafka, names["source"], [b"x"] * per_partition, partition=0)
    await _produce(stack.kafka, names["source"], [b"y"] * per_partition, partition=1)
    await first.start()
    second = StreamApp(group, settings, dlq_topic=names["dlq"])
    second.consume(names["source"], handler=quick)
    try:
        await _until(lambda: any(kind == "handled" for kind, _ in journal), "the first member's first record")
        await second.start()
        await _until(
            lambda: bool(second.assignment()) and len(first.assignment()) == 1,
            "the partitions shared between the two members",
        )
        after_revoke = journal.index(next(e for e in journal if e[0] == "revoked"))
        mine = {tp.partition for tp in first.assignment()}
        # Everything is handled by one member or the other.
        await _until(
            lambda: (
                {(p, o) for k, (p, o) in journal if k == "handled"} | set(second_handled)
                >= {(p, o) for p in (0, 1) for o in range(per_partition)}
            ),
            "every record handled",
        )
    finally:
        await second.stop()
        await first.stop()
    late = [where for kind, where in journal[after_revoke:] if kind == "handled"]
    assert late, "the first member handled nothing after the rebalance"
    assert all(partition in mine for partition, _ in late), (
        f"records of a revoked partition dispatched after the revocation: {late}"
    )


async def test_a_batch_in_hand_is_finished_and_committed_before_its_partitions_move(stack: Stack) -> None:
    names = await _topics(stack.kafka, 2)
    group = f"test-edges-{uuid.uuid4().hex[:8]}"
    settings = ServiceSettings(**stack.kafka_fields(), kafka_fetch_max_wait_ms=50, kafka_session_timeout_seconds=6)
    journal: list[tuple[str, Any]] = []
    release = asyncio.Event()
    first = _Watched(group, settings, dlq_topic=names["dlq"], journal=journal, on_revoke=release.set)
    seen: list[tuple[str, int, int]] = []

    async def slow_batch(records: list[Record]) -> None:
        journal.append(("batch", len(records)))
        await release.wait()
        # Work that outlasts the revocation by a second (simulated work, not
        # synchronisation): partitions that moved without waiting for it
        # would be read again by the second member from the old commit.
        await asyncio.sleep(1.0)
        seen.extend(("first", r.partition, r.offset) for r in records)

    async def quick_batch(records: list[Record]) -> None:
        seen.extend(("second", r.partition, r.offset) for r in records)

    first.consume_batches(names["source"], handler=slow_batch, batch_size=500, batch_window=0.2)
    await _produce(stack.kafka, names["source"], [b"x"] * 30, partition=0)
    await _produce(stack.kafka, names["source"], [b"y"] * 30, partition=1)
    await first.start()
    second = StreamApp(group, settings, dlq_topic=names["dlq"])
    second.consume_batches(names["source"], handler=quick_batch, batch_size=500, batch_window=0.05)
    try:
        await _until(lambda: any(kind == "batch" for kind, _ in journal), "the first member's batch")
        await second.start()
        await _until(lambda: bool(second.assignment()), "the second member's partitions")
        await _until(lambda: len({(p, o) for _, p, o in seen}) == 60, "every record handled")
    finally:
        await second.stop()
        await first.stop()
    # The batch in hand at the revocation was finished and committed before
    # the partitions moved: nothing in it was handled a second time.
    handled = [(p, o) for _, p, o in seen]
    assert len(handled) == len(set(handled)), "records handled twice across the rebalance"


@pytest.mark.parametrize("mode", ["records", "batches"])
async def test_members_coming_and_going_under_load_lose_nothing(stack: Stack, mode: str) -> None:
    names = await _topics(stack.kafka, 6)
    group = f"test-edges-{uuid.uuid4().hex[:8]}"
    settings = ServiceSettings(**stack.kafka_fields(), kafka_fetch_max_wait_ms=50, kafka_session_timeout_seconds=6)
    handled: set[tuple[int, int]] = set()

    def member() -> StreamApp:
        app = StreamApp(group, settings, dlq_topic=names["dlq"])

        async def one(record: Record) -> None:
            handled.add((record.partition, record.offset))

        async def many(records: list[Record]) -> None:
            await asyncio.sleep(0.01)  # a transaction's worth of work
            handled.update((r.partition, r.offset) for r in records)

        if mode == "records":
            app.consume(names["source"], handler=one, concurrency=8)
        else:
            app.consume_batches(names["source"], handler=many, batch_size=50, batch_window=0.02)
        return app

    total = 3000
    producer = AIOKafkaProducer(**stack.kafka.kafka_client_kwargs(), acks="all", linger_ms=5)
    await producer.start()
    steady = member()
    await steady.start()
    try:

        async def load() -> None:
            for i in range(total):
                await producer.send(names["source"], value=b"v", key=f"k{i}".encode())
                if i % 100 == 0:
                    await producer.flush()
            await producer.flush()

        loading = asyncio.ensure_future(load())
        # Another member joins and leaves (cleanly or not) while records flow.
        for round_ in range(6):
            extra = member()
            await extra.start()
            await _until(partial(_has_partitions, extra), "the extra member's partitions")
            if round_ % 2:
                await extra.stop()
            else:
                # Gone without a word: its consumer is closed under it.
                await extra.consumer.stop()
                await extra.stop()
        await loading
        tps = [TopicPartition(names["source"], p) for p in range(6)]
        consumer = AIOKafkaConsumer(**stack.kafka.kafka_client_kwargs(), enable_auto_commit=False)
        await consumer.start()
        try:
            end = await consumer.end_offsets(tps)
        finally:
            await consumer.stop()
        expected = {(tp.partition, o) for tp in tps for o in range(end[tp])}
        assert len(expected) == total
        await _until(lambda: handled >= expected, "every record handled", timeout=120)
    finally:
        await steady.stop()
        await producer.stop()
    committed = await _committed(stack.kafka, group, tps)
    assert committed == {tp.partition: end[tp] for tp in tps}


@pytest.mark.parametrize("mode", ["records", "batches"])
async def test_records_a_poll_returns_after_a_rebalance_are_handled(stack: Stack, mode: str) -> None:
    """aiokafka's getmany holds its records back while a rebalance is under
    way and then returns those of the new assignment: a poll that began
    before a revocation can end after it with records the member must
    handle (their positions have moved on; dropping them loses them)."""
    names = await _topics(stack.kafka, 2)
    group = f"test-edges-{uuid.uuid4().hex[:8]}"
    settings = ServiceSettings(**stack.kafka_fields(), kafka_fetch_max_wait_ms=50, kafka_session_timeout_seconds=6)
    handled: set[tuple[int, int]] = set()

    async def note(record: Record) -> None:
        handled.add((record.partition, record.offset))

    async def note_all(records: list[Record]) -> None:
        handled.update((r.partition, r.offset) for r in records)

    def member() -> StreamApp:
        app = StreamApp(group, settings, dlq_topic=names["dlq"])
        if mode == "records":
            app.consume(names["source"], handler=note)
        else:
            app.consume_batches(names["source"], handler=note_all, batch_size=100, batch_window=0.05)
        return app

    first, second = member(), member()
    await first.start()
    try:
        await _until(lambda: len(first.assignment()) == 2, "the first member's partitions")
        real_getmany = first.consumer.getmany
        entered = asyncio.Event()
        armed = True

        async def straddling_getmany(*args: Any, **kwargs: Any) -> Any:
            # One poll that is under way while the group rebalances: it
            # returns once the member has its new assignment.
            nonlocal armed
            if armed:
                armed = False
                entered.set()
                await _until(lambda: len(first.assignment()) == 1, "the first member's new assignment")
            return await real_getmany(*args, **kwargs)

        first.consumer.getmany = straddling_getmany
        await asyncio.wait_for(entered.wait(), 30)
        await _produce(stack.kafka, names["source"], [b"x"] * 20, partition=0)
        await _produce(stack.kafka, names["source"], [b"y"] * 20, partition=1)
        await second.start()
        expected = {(p, o) for p in (0, 1) for o in range(20)}
        await _until(lambda: handled >= expected, "every record handled by one member or the other")
    finally:
        await second.stop()
        await first.stop()
