"""The stream runtime every consuming service shares, and its record loop.

``StreamApp`` is one Kafka consumer-group member plus one producer: it
hands the records it fetches (``getmany``, a batch at a time) to plain
async handlers, and commits offsets once they are handled and what they
produced is acknowledged. Handlers stay thin. This module decides what
happens when one fails: transient faults (broker or database unreachable)
are retried in place so nothing is lost and order is kept; anything else
sends the record to the DLQ with the error so the partition keeps moving.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, TypeVar

import asyncpg  # type: ignore[import-untyped]
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]
from aiokafka.structs import ConsumerRecord  # type: ignore[import-untyped]
from google.protobuf.message import DecodeError, Message
from mode import Service
from opentelemetry import propagate, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from invoicing_common import topics
from invoicing_common.kafka import dead_letter, headers_to_carrier, producer, require_topics
from invoicing_common.settings import ServiceSettings
from invoicing_common.telemetry import DLQ_RECORDS, consume_span_attributes, meter, produce_span

log = logging.getLogger(__name__)
tracer = trace.get_tracer("invoicing_common.streams")


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


class PermanentError(Exception):
    """The record can never be processed; it goes to the DLQ."""


TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    KafkaError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.CannotConnectNowError,
    # The server is restarting or crashed: the connection goes, the next one works.
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
)

# Failures that will not go away by retrying: the record goes to the DLQ.
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    DecodeError,
    PermanentError,
    ValueError,
    KeyError,
    TypeError,
    UnicodeDecodeError,
)

Handler = Callable[[Record], Awaitable[None]]
T = TypeVar("T")


EventT = TypeVar("EventT", bound=Message)


def decode_event(record: Record, message_type: type[EventT]) -> EventT:
    """Decode a pipeline event; a record that is not one is a PermanentError
    (it goes to the DLQ). Every pipeline event names its invoice."""
    if record.value is None:
        raise PermanentError("record has no value")
    event = message_type.FromString(record.value)
    invoice = getattr(event, "invoice", None)
    if invoice is None or not invoice.invoice_id:
        raise PermanentError(f"{message_type.DESCRIPTOR.name} without invoice.invoice_id")
    return event


def record_from(message: Any) -> Record:
    return Record(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
        headers=list(message.headers or []),
    )


def consumer_span(record: Record, consumer_group: str) -> Span:
    """A started CONSUMER span for ``record``, child of the producer's span
    found in its headers (the producer ran in another process: the context
    comes from the headers only). The caller ends it."""
    return tracer.start_span(
        f"process {record.topic}",
        context=propagate.extract(headers_to_carrier(record.headers)),
        kind=SpanKind.CONSUMER,
        attributes=consume_span_attributes(record.topic, record.partition, record.offset, consumer_group, record.key),
    )


async def _back_off(delay: float) -> float:
    """Wait ``delay`` seconds; returns the next wait (doubled, at most 10 s)."""
    await asyncio.sleep(delay)
    return min(delay * 2, 10.0)


async def retry_transient(operation: Callable[[], Awaitable[T]], what: str, retry_delay: float = 0.5) -> T:
    """Run ``operation`` until it succeeds or fails for a non-transient
    reason: a broker or database outage holds the partition, never skips it."""
    delay = retry_delay
    while True:
        try:
            return await operation()
        except TRANSIENT_ERRORS as exc:
            log.warning("transient failure in %s, retrying in %.1fs: %s", what, delay, exc)
            delay = await _back_off(delay)


class OutTopic:
    """A topic the stream writes to. Each send is queued on the app's
    producer; its delivery is awaited before the offset of the record being
    handled is committed, so a record is only committed once what it
    produced is durable."""

    def __init__(self, app: StreamApp, name: str) -> None:
        self._app = app
        self.name = name

    async def send(self, *, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]] | None = None) -> None:
        delivery = await self._app.producer.send(self.name, value=value, key=key, headers=headers or [])
        pending = _deliveries.get()
        if pending is None:
            # Outside a handled record (nothing will be committed after it).
            await delivery
        else:
            pending.append(delivery)


# Deliveries queued while one record (or one batch) is handled.
_deliveries: contextvars.ContextVar[list[asyncio.Future[Any]] | None] = contextvars.ContextVar(
    "invoicing_deliveries", default=None
)

BatchHandler = Callable[[list[Record]], Awaitable[None]]


@dataclass(frozen=True)
class _Subscription:
    topics: tuple[str, ...]
    on_record: Handler | None = None
    on_batch: BatchHandler | None = None
    concurrency: int = 1
    batch_size: int = 1
    batch_window: float = 0.0


class StreamApp(Service):
    """One consumer-group member and one producer for a service's streams.

    Records come from ``getmany``, a batch at a time, and go to a plain
    async handler: per record (``consume``, up to ``concurrency`` at once)
    or per batch (``consume_batches``). faust's stream machinery, which this
    replaces, cost about a third of route's CPU per invoice
    (docs/performance.md). Offsets are committed when every record before
    them is handled and what it produced is acknowledged: at-least-once, as
    before; the pipeline's event ids make a redelivery harmless.
    """

    def __init__(self, group_id: str, settings: ServiceSettings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.group_id = group_id
        self._settings = settings
        self._subscription: _Subscription | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        # Per partition, the records being handled, oldest first.
        self._in_flight: dict[TopicPartition, deque[tuple[int, asyncio.Task[None]]]] = {}
        self._next_offset: dict[TopicPartition, int] = {}
        self._slots: asyncio.Semaphore | None = None
        self._loop_task: asyncio.Future[None] | None = None
        # Handled, not yet committed: next offset per partition.
        self._uncommitted: dict[TopicPartition, int] = {}
        self._commit_due = 0.0
        # Every topic read or written: each must exist at start.
        self._declared: set[str] = set()
        self._dlq = self.topic(topics.DLQ)

    # -- wiring ---------------------------------------------------------------

    def topic(self, name: str) -> OutTopic:
        self._declared.add(name)
        return OutTopic(self, name)

    def consume(self, *topic_names: str, handler: Handler, concurrency: int = 1) -> None:
        self._subscribe(_Subscription(topic_names, on_record=handler, concurrency=concurrency))

    def consume_batches(self, *topic_names: str, handler: BatchHandler, batch_size: int, batch_window: float) -> None:
        self._subscribe(_Subscription(topic_names, on_batch=handler, batch_size=batch_size, batch_window=batch_window))

    def _subscribe(self, subscription: _Subscription) -> None:
        if self._subscription is not None:
            raise RuntimeError(f"{self.group_id} already consumes {self._subscription.topics}")
        self._subscription = subscription
        self._declared.update(subscription.topics)

    @property
    def producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("stream producer not started")
        return self._producer

    @property
    def consumer(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("stream consumer not started")
        return self._consumer

    @property
    def consuming(self) -> bool:
        """Whether the consume loop still takes new records."""
        return self._loop_task is not None and not self._loop_task.done()

    def assignment(self) -> set[TopicPartition]:
        return set(self._consumer.assignment()) if self._consumer is not None else set()

    def lag(self) -> dict[TopicPartition, int]:
        """High watermark minus the next offset this member will read."""
        out: dict[TopicPartition, int] = {}
        if self._consumer is None:
            return out
        for tp in self._consumer.assignment():
            highwater = self._consumer.highwater(tp)
            if highwater is None:
                continue
            out[tp] = max(0, highwater - self._next_offset.get(tp, highwater))
        return out

    # -- lifecycle --------------------------------------------------------------

    async def on_start(self) -> None:
        s = self._settings
        await require_topics(s, sorted(self._declared), self.group_id)
        self._producer = producer(s, f"{self.group_id}-streams", s.kafka_producer_linger_ms)
        await self._producer.start()
        if self._subscription is None:
            return
        session_ms = int(s.kafka_session_timeout_seconds * 1000)
        self._consumer = AIOKafkaConsumer(
            **s.kafka_client_kwargs(),
            client_id=f"{self.group_id}-streams",
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_min_bytes=s.kafka_fetch_min_bytes,
            fetch_max_wait_ms=s.kafka_fetch_max_wait_ms,
            max_partition_fetch_bytes=topics.MAX_MESSAGE_BYTES,
            fetch_max_bytes=2 * topics.MAX_MESSAGE_BYTES,
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(1000, session_ms // 3),
        )
        self._consumer.subscribe(list(self._subscription.topics), listener=_Rebalance(self))
        await self._consumer.start()
        self._slots = asyncio.Semaphore(self._subscription.concurrency)
        self._loop_task = asyncio.ensure_future(self._run())

    async def on_stop(self) -> None:
        # should_stop is set: the consume loop ends after its current fetch
        # (at most _POLL_MS) or batch. Then finish the records in hand,
        # commit them, leave the group, and flush the producer.
        if self._loop_task is not None:
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None
        await self._drain()
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def _run(self) -> None:
        subscription = self._subscription
        assert subscription is not None
        try:
            if subscription.on_batch is not None:
                await self._run_batches(subscription, subscription.on_batch)
            elif subscription.on_record is not None:
                await self._run_records(subscription.on_record)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("%s: consume loop failed; stopping the service", self.group_id)
            await self.crash(exc)

    # -- per record ---------------------------------------------------------

    async def _run_records(self, handler: Handler) -> None:
        assert self._slots is not None
        while not self.should_stop:
            batch = await self.consumer.getmany(timeout_ms=_POLL_MS)
            for tp, messages in batch.items():
                for message in messages:
                    await self._slots.acquire()
                    if self.should_stop:
                        self._slots.release()
                        return
                    task = asyncio.ensure_future(self._one(record_from(message), handler))
                    self._in_flight.setdefault(tp, deque()).append((message.offset, task))
                    self._next_offset[tp] = message.offset + 1
            await self._commit_done()

    async def _one(self, record: Record, handler: Handler) -> None:
        dlq = self._dlq
        slots = self._slots
        assert slots is not None
        held = True

        def handled() -> None:
            # The next record may start once this one is handled; its
            # deliveries are still awaited before its offset is committed.
            nonlocal held
            if held:
                held = False
                slots.release()

        try:
            await self._until_delivered(
                lambda: handle_record(record, handler, dlq=dlq, consumer_group=self.group_id), record, handled
            )
        finally:
            handled()

    async def _until_delivered(
        self, operation: Callable[[], Awaitable[None]], record: Record, handled: Callable[[], None] | None = None
    ) -> None:
        """Run ``operation`` and wait for every record it produced; if a
        delivery fails, run it again (the ids make a second copy harmless)."""

        async def attempt() -> None:
            pending: list[asyncio.Future[Any]] = []
            token = _deliveries.set(pending)
            try:
                await operation()
            finally:
                _deliveries.reset(token)
            if handled is not None:
                handled()
            await asyncio.gather(*pending)

        await retry_transient(attempt, f"delivering what {record.topic}/{record.partition}@{record.offset} produced")

    async def _commit_done(self, now: bool = False) -> None:
        """Commit, per partition, past the records handled without a gap."""
        offsets: dict[TopicPartition, int] = {}
        for tp, queue in self._in_flight.items():
            while queue and queue[0][1].done():
                offset, _task = queue.popleft()
                offsets[tp] = offset + 1
        await self._commit(offsets, now=now)

    async def partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        """Finish and commit what is in hand before the partitions move."""
        await self._drain()
        for tp in revoked:
            self._in_flight.pop(tp, None)
            self._next_offset.pop(tp, None)

    async def _drain(self) -> None:
        tasks = [task for queue in self._in_flight.values() for _offset, task in queue]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._commit_done(now=True)

    async def _commit(self, offsets: dict[TopicPartition, int], now: bool = False) -> None:
        """Record ``offsets`` as done; send the commits at most once per
        ``_COMMIT_INTERVAL`` (one request, not one per fetch), or ``now``."""
        self._uncommitted.update(offsets)
        clock = asyncio.get_running_loop().time()
        if not self._uncommitted or self._consumer is None or (not now and clock < self._commit_due):
            return
        self._commit_due = clock + _COMMIT_INTERVAL
        assigned = self._consumer.assignment()
        offsets = {tp: o for tp, o in self._uncommitted.items() if tp in assigned}
        self._uncommitted = {}
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except KafkaError as exc:
            # A rebalance moved the partitions, or the broker is away: the
            # next commit covers these offsets, or the partitions' next
            # owner handles the records again from the last commit.
            log.warning("%s: commit not done, records may be redelivered: %s", self.group_id, exc)

    # -- per batch ----------------------------------------------------------

    async def _run_batches(self, subscription: _Subscription, handler: BatchHandler) -> None:
        loop = asyncio.get_running_loop()
        while not self.should_stop:
            messages: list[ConsumerRecord] = []
            deadline: float | None = None
            while len(messages) < subscription.batch_size and not self.should_stop:
                wait = _POLL_MS if deadline is None else max(0, int((deadline - loop.time()) * 1000))
                batch = await self.consumer.getmany(
                    timeout_ms=wait, max_records=subscription.batch_size - len(messages)
                )
                for records in batch.values():
                    messages.extend(records)
                if messages and deadline is None:
                    # Wait a little for more: one transaction per batch.
                    deadline = loop.time() + subscription.batch_window
                if deadline is not None and loop.time() >= deadline:
                    break
            if not messages:
                continue
            records = [record_from(m) for m in messages]
            await self._until_delivered(partial(handler, records), records[0])
            offsets: dict[TopicPartition, int] = {}
            for m in messages:
                tp = TopicPartition(m.topic, m.partition)
                offsets[tp] = max(offsets.get(tp, 0), m.offset + 1)
                self._next_offset[tp] = offsets[tp]
            await self._commit(offsets)


_POLL_MS = 500
# As faust did: a crash hands at most this much work to be done again.
_COMMIT_INTERVAL = 1.0


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, app: StreamApp) -> None:
        self._app = app

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._app.partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        log.info("%s: assigned %s", self._app.group_id, sorted(f"{tp.topic}/{tp.partition}" for tp in assigned))


async def send(topic: OutTopic, key: str, value: bytes, message_id: str = "") -> None:
    """Queue a record under a PRODUCER span whose context travels in the
    headers. The source record is only committed once this one is
    acknowledged (``OutTopic``)."""
    with produce_span(topic.name, key, message_id) as headers:
        await topic.send(key=key.encode(), value=value, headers=headers)


class Sink(Protocol):
    """Where dead letters go: a topic of the app (tests pass a fake)."""

    async def send(
        self, *, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]] | None = None
    ) -> None: ...


async def handle_record(
    record: Record, handler: Handler, *, dlq: Sink, consumer_group: str, retry_delay: float = 0.5
) -> None:
    """Run ``handler`` for one record under its CONSUMER span."""
    with trace.use_span(consumer_span(record, consumer_group), end_on_exit=True):
        await _handle_with_retry(record, handler, dlq=dlq, consumer_group=consumer_group, retry_delay=retry_delay)


async def _handle_with_retry(
    record: Record, handler: Handler, *, dlq: Sink, consumer_group: str, retry_delay: float
) -> None:
    delay = retry_delay
    while True:
        try:
            await handler(record)
            return
        except TRANSIENT_ERRORS as exc:
            # Keep the partition where it is: skipping would lose the record.
            log.warning(
                "transient failure, retrying in %.1fs: %s",
                delay,
                exc,
                extra={"topic": record.topic, "partition": record.partition, "offset": record.offset},
            )
            delay = await _back_off(delay)
        except PERMANENT_ERRORS as exc:
            await send_to_dlq(record, exc, dlq=dlq, consumer_group=consumer_group)
            return
        except Exception as exc:
            log.exception(
                "unexpected failure",
                extra={"topic": record.topic, "partition": record.partition, "offset": record.offset},
            )
            await send_to_dlq(record, exc, dlq=dlq, consumer_group=consumer_group)
            return


async def send_to_dlq(record: Record, exc: BaseException, *, dlq: Sink, consumer_group: str) -> None:
    letter = dead_letter(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value,
        error=exc,
        consumer_group=consumer_group,
    )
    log.error(
        "record sent to DLQ: %s: %s",
        type(exc).__name__,
        exc,
        extra={"topic": record.topic, "partition": record.partition, "offset": record.offset},
    )
    DLQ_RECORDS.add(1, {"source_topic": record.topic, "consumer_group": consumer_group})
    trace.get_current_span().set_status(Status(StatusCode.ERROR, f"sent to DLQ: {type(exc).__name__}"))
    await dlq.send(key=record.key, value=letter.SerializeToString(), headers=record.headers)


def register_lag_gauge(app: StreamApp) -> None:
    """messaging.kafka.consumer.lag per topic and partition: the high
    watermark minus the next offset this instance will read."""

    def observe(_options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(
                lag,
                {
                    "messaging.destination.name": tp.topic,
                    "messaging.destination.partition.id": str(tp.partition),
                    "messaging.consumer.group.name": app.group_id,
                },
            )
            for tp, lag in app.lag().items()
        ]

    meter().create_observable_gauge(
        "messaging.kafka.consumer.lag", callbacks=[observe], unit="{message}", description="Consumer lag"
    )
