"""The transactional outbox: a record to publish is a row written in the
same transaction as the state it announces, and one relay per service
publishes the rows.

Writers never wait for Kafka: a transaction commits the state and its
records together, or neither. ``OutboxRelay`` (one leader per service,
a PostgreSQL advisory lock) reads the pending rows in ``seq`` order, sends
them (idempotent producer, acks=all), waits for the acknowledgements, then
marks the rows published (or deletes them): in the statement of its next
look for pending rows, unless waiters need their positions at once.
Nothing holds a transaction open across an acknowledgement.

A relay that dies between the acknowledgement and the mark would publish
those rows again. A new leader first looks for them on the topics (each
record carries its row in the ``invoicing-outbox`` header) and marks the
ones it finds, so each row reaches Kafka once. The same holds for marks
that a database crash loses: the relay commits them without waiting for
the WAL's flush.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import asyncpg  # type: ignore[import-untyped]
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.structs import ConsumerRecord  # type: ignore[import-untyped]
from mode import Service
from opentelemetry import propagate, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import SpanKind

from invoicing_common.db import Database
from invoicing_common.kafka.admin import require_topics
from invoicing_common.kafka.clients import assign_all, producer, read_to_end
from invoicing_common.kafka.errors import Backoff, is_transient
from invoicing_common.settings import KafkaClientSettings
from invoicing_common.telemetry import meter

log = logging.getLogger(__name__)
tracer = trace.get_tracer("invoicing_common.kafka.outbox")

# Each published record names its row: "<source>:<seq>".
OUTBOX_HEADER = "invoicing-outbox"
# Record timestamps are set when sent, after the row was written.
_RECONCILE_MARGIN = timedelta(seconds=60)
# Safety net for a missed notification; wake-ups normally come from NOTIFY.
_IDLE_WAKE_SECONDS = 1.0
# The payload of the notifications sent by writers that wake this process's
# relay themselves once they commit (``OutboxRelay.wake``): that relay skips
# them (they would only make it look again for rows it has just sent), and
# the relays of other processes wake on them as on any other.
WOKEN_IN_PROCESS = secrets.token_hex(8)


@dataclass(frozen=True)
class OutboxMessage:
    """A record to publish, as a writer hands it to ``insert``."""

    topic: str
    key: bytes
    value: bytes | None  # None: a tombstone (compacted topics)
    # The writer's trace context: the relay's PRODUCER span continues it.
    carrier: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class OutboxTable:
    """Where a service's outbox rows are and how the relay reads them. The
    SQL fragments are constants of the service, never input."""

    source: str  # names the rows in OUTBOX_HEADER and the leader lock
    channel: str  # NOTIFY channel the writers signal on commit
    table: str = "outbox"
    topic_sql: str = "topic"
    key_sql: str = "key"
    value_sql: str = "value"
    # Published rows: deleted at once, or kept (marked) for readers of the
    # table (status's watch) and for waiters that need their positions.
    keep_published: bool = False
    # The table has published_partition / published_offset columns.
    positions: bool = False

    def pending_sql(self, marking: bool = False) -> str:
        """The pending rows, ``$1`` at most. ``marking``: the same statement
        first marks the rows ``$2`` (sent earlier) published, and skips them
        (it reads the table as it was before the mark)."""
        select = (
            f"SELECT seq, {self.topic_sql} AS topic, {self.key_sql} AS key, {self.value_sql} AS value,"
            f" headers, created_at FROM {self.table} WHERE published_at IS NULL"
        )
        if not marking:
            return f"{select} ORDER BY seq LIMIT $1"
        return f"WITH marked AS ({self.mark_sql('$2')}) {select} AND seq <> ALL($2::bigint[]) ORDER BY seq LIMIT $1"

    def mark_sql(self, seqs: str) -> str:
        """Marks the rows ``seqs`` (a bigint[] parameter) published, for a
        table without positions."""
        if not self.keep_published:
            return f"DELETE FROM {self.table} WHERE seq = ANY({seqs}::bigint[])"
        return f"UPDATE {self.table} SET published_at = now() WHERE seq = ANY({seqs}::bigint[])"

    def lock_key(self) -> int:
        return zlib.crc32(f"invoicing-outbox:{self.source}".encode()) & 0x7FFFFFFF


@dataclass(frozen=True)
class Pending:
    seq: int
    topic: str
    key: bytes
    value: bytes | None
    carrier: Mapping[str, str]
    created_at: datetime


Position = tuple[int, int]  # (partition, offset)


class Sender(Protocol):
    """Sends rows and returns where each landed, in order."""

    async def __call__(self, producer: AIOKafkaProducer, rows: Sequence[Pending], source: str) -> list[Position]: ...


async def insert(
    conn: asyncpg.Connection, outbox: OutboxTable, messages: Sequence[OutboxMessage], *, wakes_relay: bool = False
) -> list[int]:
    """Write ``messages`` as pending rows in the caller's transaction and
    wake the relay when it commits; returns their seqs. ``wakes_relay``:
    the caller calls this process's ``OutboxRelay.wake`` once it commits."""
    if not messages:
        return []
    # The notification goes with the rows, in the same round trip; it is
    # delivered at commit, and only then.
    rows = await conn.fetch(
        f"WITH added AS ({insert_sql(outbox, 1)} RETURNING seq)"
        " SELECT seq FROM added, (SELECT pg_notify($5, $6)) AS woken ORDER BY seq",
        *insert_args(messages),
        *notify_args(outbox, wakes_relay),
    )
    return [int(r["seq"]) for r in rows]


def insert_sql(outbox: OutboxTable, first: int) -> str:
    """The INSERT of ``insert``, its parameters (``insert_args``) numbered
    from ``$first``: for a writer that adds rows in a statement of its own,
    with a ``pg_notify`` of ``notify_args`` in it."""
    p = [f"${first + i}" for i in range(4)]
    return (
        f"INSERT INTO {outbox.table} (topic, key, value, headers)"
        f" SELECT * FROM unnest({p[0]}::text[], {p[1]}::bytea[], {p[2]}::bytea[], {p[3]}::jsonb[])"
    )


def insert_args(messages: Sequence[OutboxMessage]) -> tuple[Any, ...]:
    return (
        [m.topic for m in messages],
        [m.key for m in messages],
        [m.value for m in messages],
        [json.dumps(dict(m.carrier)) for m in messages],
    )


def notify_args(outbox: OutboxTable, wakes_relay: bool) -> tuple[str, str]:
    """The channel and payload of a writer's ``pg_notify``."""
    return outbox.channel, WOKEN_IN_PROCESS if wakes_relay else ""


def record_headers(source: str, seq: int) -> list[tuple[str, bytes]]:
    """The current span's trace context, and the row the record comes from."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return [(k, v.encode()) for k, v in carrier.items()] + [(OUTBOX_HEADER, f"{source}:{seq}".encode())]


async def send_each(producer: AIOKafkaProducer, rows: Sequence[Pending], source: str) -> list[Position]:
    """The default sender: one ``send`` per row, each under a PRODUCER span
    that continues the writer's trace."""
    deliveries = []
    for row in rows:
        with tracer.start_as_current_span(
            f"send {row.topic}", context=propagate.extract(dict(row.carrier)), kind=SpanKind.PRODUCER
        ) as span:
            span.set_attributes(
                {
                    "messaging.system": "kafka",
                    "messaging.operation.type": "send",
                    "messaging.destination.name": row.topic,
                    "messaging.kafka.message.key": row.key.decode(errors="replace"),
                }
            )
            deliveries.append(
                await producer.send(row.topic, value=row.value, key=row.key, headers=record_headers(source, row.seq))
            )
    return [(m.partition, m.offset) for m in await asyncio.gather(*deliveries)]


def seq_from_header(record: ConsumerRecord, source: str) -> int | None:
    prefix = f"{source}:".encode()
    for name, value in record.headers or ():
        if name == OUTBOX_HEADER and value.startswith(prefix):
            with contextlib.suppress(ValueError):
                return int(value[len(prefix) :])
    return None


class OutboxRelay(Service):
    """Publishes a service's outbox while it holds the leader lock."""

    def __init__(
        self,
        database: Database,
        outbox: OutboxTable,
        kafka: KafkaClientSettings,
        client_id: str,
        *,
        batch_size: int = 500,
        linger_ms: int = 5,
        sender: Sender = send_each,
        seq_of: Callable[[ConsumerRecord], int | None] | None = None,
        # Published rows kept this long (keep_published tables); None: the
        # service prunes its table itself.
        published_retention: timedelta | None = timedelta(hours=1),
        topics: Sequence[str] = (),
        producer_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._database = database
        self._outbox = outbox
        self._kafka = kafka
        self._client_id = client_id
        self._batch_size = batch_size
        self._linger_ms = linger_ms
        self._sender = sender
        # How to recognise a record of this outbox on the topic when its
        # header is missing (records published before the header existed).
        self._seq_of = seq_of
        self._published_retention = published_retention
        # Checked at start: a relay with nowhere to publish must not start.
        self._topics = list(topics)
        self._producer_options = dict(producer_options or {})
        self._producer: AIOKafkaProducer | None = None
        self._wake = asyncio.Event()
        # Sent and acknowledged, to be marked by the next look.
        self._unmarked: list[int] = []
        self._published = asyncio.Condition()
        self.leader = False
        self.published = 0
        self._oldest_pending_age = 0.0
        meter().create_observable_gauge(
            "invoicing.outbox.age",
            callbacks=[self._observe_age],
            unit="s",
            description="Age of the oldest row the outbox relay last found pending",
        )

    def _observe_age(self, _options: CallbackOptions) -> Iterable[Observation]:
        if self.leader:
            yield Observation(self._oldest_pending_age, {"invoicing.outbox.source": self._outbox.source})

    def wake(self) -> None:
        """A writer in this process committed rows: publish without waiting
        for the notification."""
        self._wake.set()

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        if payload != WOKEN_IN_PROCESS:
            self._wake.set()

    async def on_start(self) -> None:
        if self._topics:
            await require_topics(self._kafka, self._topics, f"{self._client_id} (outbox relay)")
        self._producer = producer(self._kafka, self._client_id, self._linger_ms, **self._producer_options)
        await self._producer.start()

    async def on_stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    @Service.task
    async def _run(self) -> None:
        backoff = Backoff(0.5)
        while not self.should_stop:
            try:
                await self._publish_while_leader()
                backoff = Backoff(0.5)
            except Exception as exc:
                if is_transient(exc):
                    log.warning("outbox %s: relay interrupted, restarting: %r", self._outbox.source, exc)
                else:
                    log.exception("outbox %s: relay failed, restarting", self._outbox.source)
                await backoff.wait()
            finally:
                self.leader = False

    async def _publish_while_leader(self) -> None:
        outbox = self._outbox
        # The relay's statements name rows by seq: planned once. Its marks
        # need not wait for the WAL's flush: a mark a crash loses leaves a
        # row that is on Kafka, which the next leader finds and marks
        # (_reconcile) instead of sending it again.
        conn: asyncpg.Connection = await self._database.connect(generic_plans=True, flushed_commits=False)
        try:
            await conn.add_listener(outbox.channel, self._notified)
            while not self.should_stop and not await conn.fetchval(
                "SELECT pg_try_advisory_lock($1)", outbox.lock_key()
            ):
                await self._wait()
            if self.should_stop:
                return
            self.leader = True
            recovered = await self._reconcile(conn)
            if recovered:
                log.warning("outbox %s: %d row(s) were already on Kafka; marked published", outbox.source, recovered)
            pruned_at = 0.0
            while not self.should_stop:
                self._wake.clear()
                if self._unmarked:
                    found = await conn.fetch(outbox.pending_sql(marking=True), self._batch_size, self._unmarked)
                    self._unmarked = []
                else:
                    found = await conn.fetch(outbox.pending_sql(), self._batch_size)
                rows = [_pending(r) for r in found]
                if not rows:
                    self._oldest_pending_age = 0.0
                    if self._published_retention is not None and time.monotonic() - pruned_at > 60:
                        await self._prune(conn)
                        pruned_at = time.monotonic()
                    await self._wait()
                    continue
                self._oldest_pending_age = max(0.0, time.time() - rows[0].created_at.timestamp())
                assert self._producer is not None
                positions = await self._sender(self._producer, rows, outbox.source)
                if outbox.positions:
                    await self._mark_positions(conn, rows, positions)
                else:
                    # Marked by the next look, in its round trip. Until then
                    # they are as rows a relay sent and died before marking:
                    # a new leader finds them on the topic (_reconcile).
                    self._unmarked = [r.seq for r in rows]
                self.published += len(rows)
                async with self._published:
                    self._published.notify_all()
                # It looks again at once (that look marks these rows). Waiting
                # for the next wake instead, when the batch was not full, saved
                # a statement per cycle, but ingest's memory then grew by 36
                # to 87 MiB instead of 22 to 30 during its first 100 MiB
                # upload (tests/e2e/test_archive.py's bound is 64); why was
                # not found (docs/performance-history.md).
        finally:
            if self._unmarked:
                with contextlib.suppress(Exception):  # a new leader reconciles them
                    await conn.execute(outbox.mark_sql("$1"), self._unmarked)
                self._unmarked = []
            await conn.close()

    async def _mark_positions(
        self, conn: asyncpg.Connection, rows: Sequence[Pending], positions: Sequence[Position]
    ) -> None:
        """Mark ``rows`` published with where each landed (tables with positions)."""
        await conn.execute(
            f"UPDATE {self._outbox.table} o SET published_at = now(), published_partition = u.p, published_offset = u.o"
            " FROM unnest($1::bigint[], $2::int[], $3::bigint[]) AS u (seq, p, o) WHERE o.seq = u.seq",
            [r.seq for r in rows],
            [p for p, _ in positions],
            [o for _, o in positions],
        )

    async def _prune(self, conn: asyncpg.Connection) -> None:
        await conn.execute(
            f"DELETE FROM {self._outbox.table} WHERE published_at < now() - $1::interval",
            self._published_retention,
        )

    async def _reconcile(self, conn: asyncpg.Connection) -> int:
        """Mark the pending rows a previous leader published but did not mark."""
        outbox = self._outbox
        pending = await conn.fetch(
            f"SELECT {outbox.topic_sql} AS topic, min(created_at) AS oldest FROM {outbox.table}"
            " WHERE published_at IS NULL GROUP BY 1"
        )
        found: list[int] = []
        for row in pending:
            since_ms = int((row["oldest"] - _RECONCILE_MARGIN).timestamp() * 1000)
            found += await self._published_seqs(row["topic"], since_ms)
        if not found:
            return 0
        if outbox.keep_published:
            result = await conn.execute(
                f"UPDATE {outbox.table} SET published_at = now()"
                " WHERE seq = ANY($1::bigint[]) AND published_at IS NULL",
                found,
            )
        else:
            result = await conn.execute(f"DELETE FROM {outbox.table} WHERE seq = ANY($1::bigint[])", found)
        return int(result.split()[-1])

    async def _published_seqs(self, topic: str, since_ms: int) -> list[int]:
        consumer = AIOKafkaConsumer(**self._kafka.kafka_client_kwargs(), enable_auto_commit=False)
        await consumer.start()
        found: list[int] = []
        try:
            tps = await assign_all(consumer, topic)
            async for batch in read_to_end(consumer, tps, since_ms=since_ms):
                for records in batch.values():
                    for record in records:
                        seq = seq_from_header(record, self._outbox.source)
                        if seq is None and self._seq_of is not None:
                            seq = self._seq_of(record)
                        if seq is not None:
                            found.append(seq)
        finally:
            await consumer.stop()
        return found

    async def _wait(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=_IDLE_WAKE_SECONDS)

    async def published_offsets(self, seqs: Sequence[int], timeout: float) -> dict[int, int] | None:
        """Wait until the rows ``seqs`` are published (by this relay or the
        leader in another instance); the last offset of theirs per
        partition, or None after ``timeout``. Needs ``positions=True``."""
        assert self._outbox.positions
        wanted = sorted(set(seqs))
        if not wanted:
            return {}
        deadline = time.monotonic() + timeout
        wait = 0.01
        while True:
            rows = await self._database.pool.fetch(
                f"SELECT published_partition AS p, max(published_offset) AS o, count(*) AS n FROM {self._outbox.table}"
                " WHERE seq = ANY($1::bigint[]) AND published_at IS NOT NULL GROUP BY 1",
                wanted,
            )
            if sum(r["n"] for r in rows) == len(wanted):
                return {int(r["p"]): int(r["o"]) for r in rows}
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            # Woken by this process's relay; a leader elsewhere is polled.
            with contextlib.suppress(TimeoutError):
                async with self._published:
                    await asyncio.wait_for(self._published.wait(), timeout=min(wait, left))
            wait = min(wait * 2, 0.2)


def _pending(row: asyncpg.Record) -> Pending:
    headers = row["headers"]
    carrier = json.loads(headers) if isinstance(headers, str) else dict(headers or {})
    return Pending(
        seq=int(row["seq"]),
        topic=row["topic"],
        key=bytes(row["key"]),
        value=None if row["value"] is None else bytes(row["value"]),
        carrier=carrier,
        created_at=row["created_at"],
    )
