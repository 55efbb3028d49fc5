"""The stream runtime every consuming service shares, and its record loop.

``StreamApp`` is one Kafka consumer-group member plus one producer: it
hands the records it fetches (``getmany``, a batch at a time) to plain
async handlers under the policy of ``handling`` (transient faults retried
in place, a record that cannot succeed dead-lettered), and commits offsets.

What it keeps true, per partition:

- an offset is committed only once every record before it was handled
  (or dead-lettered) and everything that handling produced is
  acknowledged by the broker; a handling that failed (its dead letter could
  not be written) is never committed past: the loop stops the service;
- nothing fetched before a revocation is dispatched after it;
- on revocation and on stop, the records in hand get a bounded time
  (``kafka_drain_timeout_seconds``) to finish, what finished is committed,
  the rest is cancelled and left to the partition's next owner;
- while every slot is busy (or a batch is long), fetching pauses but the
  member keeps polling, so it stays in the group however long the handlers
  take (``max.poll.interval.ms`` is about polling, not progress).

At-least-once: the pipeline's event ids make a redelivery harmless.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition  # type: ignore[import-untyped]
from aiokafka.errors import (  # type: ignore[import-untyped]
    KafkaError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    UnknownProducerId,
)
from aiokafka.structs import ConsumerRecord  # type: ignore[import-untyped]
from mode import Service
from opentelemetry.metrics import CallbackOptions, Observation

from invoicing_common import topics
from invoicing_common.kafka.admin import require_topics
from invoicing_common.kafka.clients import producer, set_linger
from invoicing_common.kafka.errors import Backoff, is_transient
from invoicing_common.kafka.handling import (
    BatchHandler,
    Handler,
    Record,
    consumer_span,
    handle_batch,
    handle_record,
    record_from,
)
from invoicing_common.kafka.pace import FetchPace, FetchShape, LingerPace
from invoicing_common.settings import ServiceSettings
from invoicing_common.telemetry import meter, produce_span

log = logging.getLogger(__name__)


class OutTopic:
    """A topic the stream writes to. Each send is queued on the app's
    producer; its delivery is awaited before the offset of the record being
    handled is committed, so a record is only committed once what it
    produced is durable."""

    def __init__(self, app: StreamApp, name: str, max_bytes: int = topics.MAX_MESSAGE_BYTES) -> None:
        self._app = app
        self.name = name
        self._max_bytes = max_bytes

    async def send(self, *, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]] | None = None) -> None:
        headers = headers or []
        size = len(value) + len(key or b"") + sum(len(k) + len(v) for k, v in headers)
        if size > self._max_bytes - _RECORD_OVERHEAD:
            # Refused here, not by the broker: a batch the broker refuses
            # leaves the idempotent producer's sequence with a gap.
            raise MessageSizeTooLargeError(f"a record of {size} bytes for {self.name} (at most {self._max_bytes})")
        self._app.sending()
        delivery = await self._app.producer.send(self.name, value=value, key=key, headers=headers)
        pending = _deliveries.get()
        if pending is None:
            # Outside a handled record (nothing will be committed after it).
            await delivery
        else:
            pending.append(delivery)


# Record-batch and record framing the broker counts in max.message.bytes.
_RECORD_OVERHEAD = 1024


# Deliveries queued while one record (or one batch) is handled.
_deliveries: contextvars.ContextVar[list[asyncio.Future[Any]] | None] = contextvars.ContextVar(
    "invoicing_deliveries", default=None
)


async def _delivered(operation: Awaitable[None], handled: Callable[[], None] | None = None) -> None:
    """Run ``operation``, then wait for every record it produced. A failed
    delivery fails the operation, under the same policy as the handler: a
    broker outage retries it, a record the broker refuses for good (too
    large) sends the source record to the DLQ."""
    pending: list[asyncio.Future[Any]] = []
    token = _deliveries.set(pending)
    try:
        await operation
    finally:
        _deliveries.reset(token)
    if handled is not None:
        handled()
    if pending:
        await asyncio.gather(*pending)


@dataclass(frozen=True)
class _Subscription:
    topics: tuple[str, ...]
    on_record: Handler | None = None
    on_batch: BatchHandler | None = None
    concurrency: int = 1
    batch_size: int = 1
    batch_window: float = 0.0
    # Adaptive batches (None: every batch waits batch_window): a batch is
    # dispatched once batch_interval has passed since the previous one, so a
    # quiet stream is handled at once and a busy one in batches at most
    # 1/batch_interval a second; batch_window still caps the wait.
    batch_interval: float | None = None
    # Records a handler acts on (None: all). The others are passed over
    # before any span, task or slot: a stage that reads every record of a
    # topic to act on a few pays almost nothing for the rest.
    select: Callable[[Record], bool] | None = None

    def selects(self, record: Record) -> bool:
        if self.select is None:
            return True
        try:
            return self.select(record)
        except Exception:  # noqa: BLE001 - the handler decides (a record it cannot read goes to the DLQ)
            return True


def batch_deadline(first: float, last_dispatch: float, subscription: _Subscription) -> float:
    """When a batch whose first record came at ``first`` is dispatched."""
    latest = first + subscription.batch_window
    if subscription.batch_interval is None:
        return latest
    return min(latest, max(first, last_dispatch + subscription.batch_interval))


class HandlingFailed(RuntimeError):
    """A record's handling failed and could not be dead-lettered: its
    offset must not be committed, so the service stops."""


class StreamApp(Service):
    """One consumer-group member and one producer for a service's streams.

    Records go to a plain async handler: per record (``consume``, up to
    ``concurrency`` at once) or per batch (``consume_batches``). The
    module's docstring lists what it guarantees.
    """

    def __init__(
        self,
        group_id: str,
        settings: ServiceSettings,
        dlq_topic: str = topics.DLQ,
        *,
        off_path: bool = False,
        **kwargs: Any,
    ) -> None:
        """``off_path``: a stage off the invoice's path, which reads every
        record to act on a few (a fetch per record would cost it, and the
        broker, more than the record): its fetches fill up to
        ``kafka_batch_fetch_min_bytes`` or wait
        ``kafka_background_fetch_max_wait_ms``, so that a quiet stage asks
        the broker a few times a second, not twenty."""
        super().__init__(**kwargs)
        self.group_id = group_id
        self._off_path = off_path
        self._settings = settings
        self._subscription: _Subscription | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        # Per partition, the records being handled, oldest first, as
        # (offset to commit once done, task).
        self._in_flight: dict[TopicPartition, deque[tuple[int, asyncio.Future[None]]]] = {}
        self._next_offset: dict[TopicPartition, int] = {}
        self._slots: asyncio.Semaphore | None = None
        self._loop_task: asyncio.Task[None] | None = None
        # Bumped at each revocation: what was fetched before is not dispatched.
        self._generation = 0
        self._failure: BaseException | None = None
        # Handled, not yet committed: next offset per partition.
        self._uncommitted: dict[TopicPartition, int] = {}
        self._commit_due = 0.0
        self._drain_timeout = settings.kafka_drain_timeout_seconds
        # Past this wait for a slot or a batch, fetching pauses and the
        # member keeps polling (well inside max.poll.interval.ms).
        self._keep_alive_after = min(10.0, settings.kafka_max_poll_interval_seconds / 3)
        self.retry_delay = 0.5
        self._renewal = asyncio.Lock()
        self._retiring: set[asyncio.Future[None]] = set()
        self.commit_interval = _COMMIT_INTERVAL
        # Every topic read or written: each must exist at start.
        self._declared: set[str] = set()
        self._dlq = self.topic(dlq_topic, topics.DLQ_MAX_MESSAGE_BYTES)
        # A batch consumer on the invoice's path fetches at the pace records
        # come (pace.py); None: its fetch stays as configured.
        self._pace: FetchPace | None = None
        # The producer lingers only while its records come fast enough to
        # share requests (pace.py); None: its linger stays as configured.
        self._linger: LingerPace | None = None
        if settings.kafka_producer_busy_linger_ms > 0:
            self._linger = LingerPace(
                busy_linger_ms=settings.kafka_producer_busy_linger_ms,
                quiet_linger_ms=settings.kafka_producer_linger_ms,
            )

    # -- wiring ---------------------------------------------------------------

    async def retry_pause(self, seconds: float) -> None:
        """A handler's wait between attempts at one record, cut short when
        the app stops: the record is then given up as the drain gives up
        one in hand (not committed; the partition's next owner takes it),
        and the stop does not wait for whatever the handler was waiting on."""
        await self.sleep(seconds)
        if self.should_stop:
            raise asyncio.CancelledError

    def topic(self, name: str, max_bytes: int = topics.MAX_MESSAGE_BYTES) -> OutTopic:
        self._declared.add(name)
        return OutTopic(self, name, max_bytes)

    def consume(
        self,
        *topic_names: str,
        handler: Handler,
        concurrency: int = 1,
        select: Callable[[Record], bool] | None = None,
    ) -> None:
        """``select``: which records ``handler`` acts on (a quick, pure test
        of the record; one that raises counts as selected). The others are
        committed as handled without a span, a task or a slot."""
        self._subscribe(_Subscription(topic_names, on_record=handler, concurrency=concurrency, select=select))

    def consume_batches(
        self,
        *topic_names: str,
        handler: BatchHandler,
        batch_size: int,
        batch_window: float,
        batch_interval: float | None = None,
    ) -> None:
        self._subscribe(
            _Subscription(
                topic_names,
                on_batch=handler,
                batch_size=batch_size,
                batch_window=batch_window,
                batch_interval=batch_interval,
            )
        )

    def _subscribe(self, subscription: _Subscription) -> None:
        if self._subscription is not None:
            raise RuntimeError(f"{self.group_id} already consumes {self._subscription.topics}")
        self._subscription = subscription
        self._declared.update(subscription.topics)

    @property
    def subscribed(self) -> tuple[str, ...]:
        return self._subscription.topics if self._subscription is not None else ()

    @property
    def producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("stream producer not started")
        return self._producer

    def use_producer(self, producer: AIOKafkaProducer) -> None:
        """Send through ``producer`` (the in-memory harness's) instead of
        starting one."""
        self._producer = producer

    @property
    def consumer(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("stream consumer not started")
        return self._consumer

    @property
    def consuming(self) -> bool:
        """Whether the consume loop runs (false once it has died)."""
        return self._loop_task is not None and not self._loop_task.done()

    @property
    def fetch_pace(self) -> FetchPace | None:
        """The pace of a batch consumer's fetches (None: fixed fetches)."""
        return self._pace

    def sending(self) -> None:
        """A record is about to be sent: the linger follows the send rate."""
        if self._linger is not None and self._linger.observe(asyncio.get_running_loop().time(), 1):
            set_linger(self.producer, self._linger.linger_ms)

    def _set_fetch(self, shape: FetchShape) -> None:
        # aiokafka reads these two when it builds each fetch request and has
        # no public way to change them on a running consumer; the pinned
        # version's attribute names are checked by tests/unit/test_fetch_pace.py.
        fetcher = self.consumer._fetcher
        fetcher._fetch_min_bytes = shape.min_bytes
        fetcher._fetch_max_wait_ms = shape.max_wait_ms

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

    # -- handling (shared with the in-memory harness) ---------------------------

    async def process(self, records: list[Record], handled: Callable[[], None] | None = None) -> None:
        """Handle ``records`` under the error policy and wait until what
        they produced is acknowledged: one record for ``consume``, a batch
        for ``consume_batches``. Returns once every record is handled or
        dead-lettered; raises only if a dead letter could not be written."""
        subscription = self._subscription
        if subscription is None:
            raise RuntimeError(f"{self.group_id} consumes nothing")
        if subscription.on_record is not None:
            for record in records:
                if subscription.selects(record):
                    await self._handle_one(record, handled)
            return
        assert subscription.on_batch is not None
        on_batch = subscription.on_batch
        spanned = [replace(r, span=consumer_span(r, self.group_id)) for r in records]
        try:
            await handle_batch(
                spanned,
                lambda batch: self._renewing(_delivered(on_batch(batch))),
                dlq=self._dlq,
                consumer_group=self.group_id,
                retry_delay=self.retry_delay,
            )
        finally:
            for record in spanned:
                assert record.span is not None
                record.span.end()

    async def _handle_one(self, record: Record, handled: Callable[[], None] | None) -> None:
        subscription = self._subscription
        assert subscription is not None and subscription.on_record is not None
        on_record = subscription.on_record
        await handle_record(
            record,
            lambda r: self._renewing(_delivered(on_record(r), handled)),
            dlq=self._dlq,
            consumer_group=self.group_id,
            retry_delay=self.retry_delay,
        )

    async def _renewing(self, attempt: Awaitable[None]) -> None:
        """Run ``attempt``; if the producer's sequence broke (a batch the
        broker refused left a gap, which aiokafka's idempotent producer does
        not recover from), replace the producer, then let the policy retry."""
        producer = self._producer
        try:
            await attempt
        except (OutOfOrderSequenceNumber, UnknownProducerId):
            async with self._renewal:
                if self._producer is producer and producer is not None:
                    log.warning("%s: producer sequence broken; starting a new producer", self.group_id)
                    self._producer = self._new_producer()
                    await self._producer.start()
                    # The old one's pending sends fail; their records are retried.
                    retiring = asyncio.ensure_future(producer.stop())
                    self._retiring.add(retiring)
                    retiring.add_done_callback(self._retiring.discard)
            raise

    def _new_producer(self) -> AIOKafkaProducer:
        s = self._settings
        linger_ms = self._linger.linger_ms if self._linger is not None else s.kafka_producer_linger_ms
        return producer(s, f"{self.group_id}-streams", linger_ms)

    # -- lifecycle --------------------------------------------------------------

    async def on_start(self) -> None:
        s = self._settings
        await require_topics(s, sorted(self._declared), self.group_id)
        if self._producer is None:
            self._producer = self._new_producer()
            await self._producer.start()
        if self._subscription is None:
            return
        session_ms = int(s.kafka_session_timeout_seconds * 1000)
        # A batch handler's records wait for their batch anyway: fetching each
        # as it comes would only add round trips (and, with adaptive batches,
        # transactions), so batch consumers keep their own, fuller fetches,
        # as do the stages off the invoice's path, which also wait longer.
        batched = self._off_path or self._subscription.on_batch is not None
        if self._off_path:
            max_wait_ms = s.kafka_background_fetch_max_wait_ms
        else:
            max_wait_ms = s.kafka_batch_fetch_max_wait_ms if batched else s.kafka_fetch_max_wait_ms
        min_bytes = s.kafka_batch_fetch_min_bytes if batched else s.kafka_fetch_min_bytes
        if batched and not self._off_path and s.kafka_batch_fetch_adaptive:
            self._pace = FetchPace(
                busy_fetch=FetchShape(min_bytes, max_wait_ms),
                quiet_fetch=FetchShape(s.kafka_fetch_min_bytes, s.kafka_fetch_max_wait_ms),
            )
        self._consumer = AIOKafkaConsumer(
            **s.kafka_client_kwargs(),
            client_id=f"{self.group_id}-streams",
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_min_bytes=min_bytes,
            fetch_max_wait_ms=max_wait_ms,
            max_partition_fetch_bytes=topics.MAX_MESSAGE_BYTES,
            fetch_max_bytes=2 * topics.MAX_MESSAGE_BYTES,
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(1000, session_ms // 3),
            max_poll_interval_ms=int(s.kafka_max_poll_interval_seconds * 1000),
            # Members drain before they rejoin: the group waits that long.
            rebalance_timeout_ms=max(session_ms, int((self._drain_timeout + 10) * 1000)),
        )
        self._consumer.subscribe(list(self._subscription.topics), listener=_Rebalance(self))
        await self._consumer.start()
        self._slots = asyncio.Semaphore(self._subscription.concurrency)
        self._loop_task = asyncio.ensure_future(self._run())

    async def on_stop(self) -> None:
        # Stop fetching at once (a record fetched and not dispatched is just
        # fetched again by the next owner), give the records in hand their
        # bounded time, commit, leave the group, flush the producer.
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None
        await self._drain()
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    async def _run(self) -> None:
        subscription = self._subscription
        assert subscription is not None
        try:
            if subscription.on_batch is not None:
                await self._run_batches(subscription)
            else:
                await self._run_records()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("%s: consume loop failed; stopping the service", self.group_id)
            await self.crash(exc)

    # -- the loop -------------------------------------------------------------

    def _check_failure(self) -> None:
        if self._failure is not None:
            raise HandlingFailed(f"{self.group_id}: a record could not be handled nor dead-lettered") from (
                self._failure
            )

    async def _poll(self, timeout_ms: int, max_records: int | None = None) -> Mapping[TopicPartition, list[Any]]:
        """``getmany``, waiting out a broker or an authorisation fault."""
        backoff = Backoff(self.retry_delay)
        while True:
            try:
                fetched: Mapping[TopicPartition, list[Any]] = await self.consumer.getmany(
                    timeout_ms=timeout_ms, max_records=max_records
                )
                return fetched
            except KafkaError as exc:
                if not is_transient(exc):
                    raise
                log.warning("%s: fetch failed, retrying in %.1fs: %r", self.group_id, backoff.next_delay, exc)
                await backoff.wait()

    async def _keep_polling_until(self, waiting: Awaitable[Any]) -> None:
        """Wait for ``waiting``; if that is long, pause fetching and keep
        polling so the member stays in its group."""
        future = asyncio.ensure_future(waiting)
        done, _ = await asyncio.wait({future}, timeout=self._keep_alive_after)
        if done:
            return
        consumer = self.consumer
        paused: set[TopicPartition] = set()
        try:
            while not future.done():
                assigned = consumer.assignment()
                if assigned - paused:
                    consumer.pause(*(assigned - paused))
                    paused |= assigned
                for tp, messages in (await self._poll(timeout_ms=0)).items():
                    # Assigned meanwhile, so not paused: put them back.
                    if messages:
                        consumer.seek(tp, messages[0].offset)
                await asyncio.wait({future}, timeout=_POLL_MS / 1000)
        finally:
            still = paused & consumer.assignment()
            if still:
                consumer.resume(*still)
            if not future.done():
                future.cancel()

    async def _run_records(self) -> None:
        slots = self._slots
        subscription = self._subscription
        assert slots is not None and subscription is not None
        # What a record passed over waits for: nothing (one future for all).
        passed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        passed.set_result(None)
        while not self.should_stop:
            self._check_failure()
            batch = await self._poll(timeout_ms=_POLL_MS)
            # What a poll returns belongs to the assignment of that moment
            # (aiokafka holds records back while a rebalance is under way).
            generation = self._generation
            for tp, messages in batch.items():
                for message in messages:
                    record = record_from(message)
                    if not subscription.selects(record):
                        # Handled as it is: committed once those before it are.
                        self._track(tp, record.offset, passed)
                        continue
                    if slots.locked():
                        await self._keep_polling_until(slots.acquire())
                    else:
                        await slots.acquire()
                    if self._generation != generation:
                        # Revoked while these waited for a slot: the new
                        # assignment reads them again from the last commit.
                        slots.release()
                        break
                    self._dispatch(tp, record)
                if self._generation != generation:
                    break
            await self._commit_done()

    def _dispatch(self, tp: TopicPartition, record: Record) -> None:
        slots = self._slots
        assert slots is not None
        held = True

        def release() -> None:
            # The next record may start once this one is handled; its
            # deliveries are still awaited before its offset is committed.
            nonlocal held
            if held:
                held = False
                slots.release()

        async def one() -> None:
            try:
                # Selected already (_run_records).
                await self._handle_one(record, release)
            finally:
                release()

        self._track(tp, record.offset, asyncio.ensure_future(one()))

    def _track(self, tp: TopicPartition, offset: int, handling: asyncio.Future[None]) -> None:
        """``offset`` is committed once ``handling`` and those before it are done."""
        self._in_flight.setdefault(tp, deque()).append((offset + 1, handling))
        self._next_offset[tp] = offset + 1

    async def _run_batches(self, subscription: _Subscription) -> None:
        loop = asyncio.get_running_loop()
        last_dispatch = -math.inf
        while not self.should_stop:
            self._check_failure()
            messages: list[ConsumerRecord] = []
            generation: int | None = None
            deadline: float | None = None
            while len(messages) < subscription.batch_size and not self.should_stop:
                wait = _POLL_MS if deadline is None else max(0, int((deadline - loop.time()) * 1000))
                fetched = await self._poll(timeout_ms=wait, max_records=subscription.batch_size - len(messages))
                if self._pace is not None and self._pace.observe(loop.time(), sum(map(len, fetched.values()))):
                    self._set_fetch(self._pace.fetch)
                if generation is not None and self._generation != generation:
                    # Revoked while the batch filled: what came before is
                    # read again by the new assignment; what this poll
                    # returned belongs to the new one.
                    messages, deadline = [], None
                generation = self._generation
                for records in fetched.values():
                    messages.extend(records)
                if messages and deadline is None:
                    # Wait a little for more: one transaction per batch;
                    # unless records come too seldom for any to join it.
                    now = loop.time()
                    quiet = self._pace is not None and not self._pace.busy
                    deadline = now if quiet else batch_deadline(now, last_dispatch, subscription)
                if deadline is not None and loop.time() >= deadline:
                    break
            if not messages or self.should_stop:
                continue
            last_dispatch = loop.time()
            task = asyncio.ensure_future(self.process([record_from(m) for m in messages]))
            last: dict[TopicPartition, int] = {}
            for m in messages:
                tp = TopicPartition(m.topic, m.partition)
                last[tp] = max(last.get(tp, -1), m.offset)
            for tp, offset in last.items():
                self._track(tp, offset, task)
            await self._keep_polling_until(asyncio.shield(task))
            await self._commit_done()

    # -- commits ----------------------------------------------------------------

    async def _commit_done(self, now: bool = False) -> None:
        """Commit, per partition, past the records handled without a gap;
        never past one whose handling failed."""
        offsets: dict[TopicPartition, int] = {}
        for tp, queue in self._in_flight.items():
            while queue and queue[0][1].done():
                task = queue[0][1]
                if task.cancelled():
                    break
                if task.exception() is not None:
                    self._failure = self._failure or task.exception()
                    break
                offset, _task = queue.popleft()
                offsets[tp] = offset
        await self._commit(offsets, now=now)

    async def partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        """Finish and commit what is in hand before the partitions move;
        nothing fetched before now is dispatched after."""
        self._generation += 1
        await self._drain()
        for tp in revoked:
            self._in_flight.pop(tp, None)
            self._next_offset.pop(tp, None)

    async def _drain(self) -> None:
        """Give the records in hand ``kafka_drain_timeout_seconds``, commit
        what finished, cancel the rest (not committed: handled again by the
        partition's next owner)."""
        tasks = {task for queue in self._in_flight.values() for _offset, task in queue}
        pending: set[asyncio.Future[None]] = set()
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=self._drain_timeout)
        await self._commit_done(now=True)
        if pending:
            log.warning("%s: %d record(s) not finished in %.0fs; left to the next owner", self.group_id,
                        len(pending), self._drain_timeout)  # fmt: skip
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=_CANCEL_WAIT)
            # Nothing after a cancelled record is committed: its partition's
            # next owner starts from the last commit.
            for queue in self._in_flight.values():
                queue.clear()

    async def _commit(self, offsets: dict[TopicPartition, int], now: bool = False) -> None:
        """Record ``offsets`` as done; send the commits at most once per
        ``commit_interval`` (one request, not one per fetch), or ``now``."""
        self._uncommitted.update(offsets)
        clock = asyncio.get_running_loop().time()
        if not self._uncommitted or self._consumer is None or (not now and clock < self._commit_due):
            return
        self._commit_due = clock + self.commit_interval
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


_POLL_MS = 500
# As faust did: a crash hands at most this much work to be done again.
_COMMIT_INTERVAL = 1.0
# How long cancelled handlers get to unwind.
_CANCEL_WAIT = 2.0


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


def register_lag_gauge(*apps: StreamApp) -> None:
    """messaging.kafka.consumer.lag per group, topic and partition: the high
    watermark minus the next offset this instance will read. A service with
    several stream apps (consumer groups) registers them in one call: a
    second gauge of the same name would be dropped by the SDK, its
    callback with it."""

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
            for app in apps
            for tp, lag in app.lag().items()
        ]

    meter().create_observable_gauge(
        "messaging.kafka.consumer.lag", callbacks=[observe], unit="{message}", description="Consumer lag"
    )
