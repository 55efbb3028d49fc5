"""Publishes the outbox to invoicing.invoice.status.v1, in commit order.

One publisher at a time across all status instances (a PostgreSQL advisory
lock), so each invoice's events reach Kafka in sequence order. The producer
is idempotent with acks=all; rows are marked published only after the
broker acknowledged them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from datetime import timedelta

import asyncpg  # type: ignore[import-untyped]
from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]
from google.protobuf.message import DecodeError
from invoicing.v1 import events_pb2
from mode import Service
from opentelemetry import propagate
from opentelemetry.trace import SpanKind

from invoicing_common import topics
from invoicing_common.db import Database
from invoicing_common.kafka import ProducerService, assign_all, read_to_end
from invoicing_common.kafka.errors import is_transient
from invoicing_common.telemetry import inject_headers, record_invoice, tracer
from invoicing_status.records import OUTBOX_CHANNEL, PendingEvent
from invoicing_status.repository import StatusRepository

log = logging.getLogger(__name__)
_LOCK_KEY = zlib.crc32(b"invoicing-status-outbox") & 0x7FFFFFFF
# Safety net for a missed notification; wake-ups normally come from NOTIFY.
_IDLE_WAKE_SECONDS = 1.0
# Record timestamps are set when sent, after the outbox row was written.
_RECONCILE_MARGIN_SECONDS = 60


class OutboxPublisher(Service):
    def __init__(
        self, database: Database, repository: StatusRepository, kafka: ProducerService, batch_size: int,
        **kwargs: object,
    ) -> None:  # fmt: skip
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._database = database
        self._repository = repository
        self._kafka = kafka
        self._batch_size = batch_size
        self._wake = asyncio.Event()
        self.published = 0

    def wake(self) -> None:
        self._wake.set()

    @Service.task
    async def _run(self) -> None:
        while not self.should_stop:
            try:
                await self._publish_while_leader()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning("outbox publisher interrupted, restarting: %s", exc)
                await self.sleep(1.0)

    async def _publish_while_leader(self) -> None:
        conn: asyncpg.Connection = await self._database.connect()
        try:
            await conn.add_listener(OUTBOX_CHANNEL, lambda *_: self._wake.set())
            while not self.should_stop and not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _LOCK_KEY):
                await self._wait()
            if self.should_stop:
                return
            # A previous leader may have died between the broker's ack and
            # marking its rows: find those records on the topic first, so no
            # transition is ever published twice.
            recovered = await self._reconcile(conn)
            if recovered:
                log.warning("outbox: %d event(s) were already on %s; marked published", recovered, topics.STATUS)
            while not self.should_stop:
                self._wake.clear()
                batch = await self._repository.pending_events(conn, self._batch_size)
                if not batch:
                    await self._wait()
                    continue
                futures = [await self._send(event) for event in batch]
                await asyncio.gather(*futures)
                await self._repository.mark_published(conn, [e.seq for e in batch])
                self.published += len(batch)
        finally:
            await conn.close()

    async def _send(self, event: PendingEvent) -> asyncio.Future[object]:
        # A PRODUCER span under the span that made the transition, so the
        # public event is part of the invoice's trace.
        parent = propagate.extract(event.headers)
        with (
            tracer().start_as_current_span(f"send {topics.STATUS}", context=parent, kind=SpanKind.PRODUCER) as span,
        ):
            span.set_attributes(
                {
                    "messaging.system": "kafka",
                    "messaging.operation.type": "send",
                    "messaging.destination.name": topics.STATUS,
                    "messaging.kafka.message.key": event.invoice_id,
                }
            )
            record_invoice(span, event.invoice_id)
            future: asyncio.Future[object] = await self._kafka.producer.send(
                topics.STATUS, value=event.payload, key=event.invoice_id.encode(), headers=inject_headers()
            )
            return future

    async def _reconcile(self, conn: asyncpg.Connection) -> int:
        oldest = await conn.fetchval("SELECT min(created_at) FROM outbox WHERE published_at IS NULL")
        if oldest is None:
            return 0
        since_ms = int((oldest - timedelta(seconds=_RECONCILE_MARGIN_SECONDS)).timestamp() * 1000)
        consumer = AIOKafkaConsumer(**self._kafka.kafka.kafka_client_kwargs(), enable_auto_commit=False)
        await consumer.start()
        found: list[int] = []
        try:
            tps = await assign_all(consumer, topics.STATUS)
            async for batch in read_to_end(consumer, tps, since_ms=since_ms):
                for records in batch.values():
                    for record in records:
                        try:
                            found.append(events_pb2.StatusEvent.FromString(record.value).sequence)
                        except DecodeError:
                            continue  # not ours; the topic is public
        finally:
            await consumer.stop()
        if not found:
            return 0
        result = await conn.execute(
            "UPDATE outbox SET published_at = now() WHERE seq = ANY($1::bigint[]) AND published_at IS NULL", found
        )
        return int(result.split()[-1])

    async def _wait(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=_IDLE_WAKE_SECONDS)
