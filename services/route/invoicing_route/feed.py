"""The directory topic: publishing changes (the outbox relay's sender), and
following them into the in-memory index.

Every route instance reads every partition of the compacted topic with a
plain consumer (no consumer group), so each instance holds the whole
directory and all instances converge on the same state. At start the topic
is read from its beginning up to its end offsets before the instance
reports itself ready; then the feed follows new records.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]
from google.protobuf.message import DecodeError
from mode import Service

from invoicing_common import topics
from invoicing_common.kafka import PermanentError, assign_all, read_to_end, require_topics
from invoicing_common.kafka.outbox import Pending, Position, record_headers
from invoicing_common.settings import KafkaClientSettings
from invoicing_route.codec import Removal, decode_record
from invoicing_route.directory import DirectoryError, DirectoryIndex, Entry

log = logging.getLogger(__name__)

Offsets = dict[int, int]


async def send_batches(producer: AIOKafkaProducer, rows: Sequence[Pending], source: str) -> list[Position]:
    """The directory outbox's sender: whole record batches per partition.

    It picks the partition itself (CRC-32 of the key modulo the partition
    count) and appends records to one batch per partition: a bulk import
    costs a few microseconds per record instead of a full ``send`` each. A
    key always maps to the same partition, which is all compaction and
    per-entry ordering need; the route relay is the topic's only writer.
    """
    partitions = len(await producer.partitions_for(topics.DIRECTORY))
    open_batches: dict[int, tuple[Any, list[int]]] = {}
    sent: list[tuple[int, list[int], asyncio.Future[Any]]] = []

    async def flush(partition: int) -> None:
        batch, members = open_batches.pop(partition)
        sent.append((partition, members, await producer.send_batch(batch, topics.DIRECTORY, partition=partition)))

    for index, row in enumerate(rows):
        if row.topic != topics.DIRECTORY:
            raise PermanentError(f"directory outbox row {row.seq} for topic {row.topic}")
        partition = zlib.crc32(row.key) % partitions
        headers = record_headers(source, row.seq)
        for _attempt in range(2):
            if partition not in open_batches:
                open_batches[partition] = (producer.create_batch(), [])
            batch, members = open_batches[partition]
            if batch.append(key=row.key, value=row.value, timestamp=None, headers=headers) is not None:
                members.append(index)
                break
            await flush(partition)  # full: send it, start another
        else:
            raise PermanentError(f"directory outbox row {row.seq} does not fit in a record batch")
    for partition in list(open_batches):
        await flush(partition)
    positions: list[Position] = [(0, 0)] * len(rows)
    for (partition, members, _), metadata in zip(sent, await asyncio.gather(*(f for _, _, f in sent)), strict=True):
        for position, index in enumerate(members):
            positions[index] = (partition, metadata.offset + position)
    return positions


class DirectoryFeed(Service):
    """Keeps ``index`` equal to the directory topic."""

    def __init__(self, kafka: KafkaClientSettings, index: DirectoryIndex, client_id: str, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._kafka = kafka
        self._client_id = client_id
        self.index = index
        self._consumer: AIOKafkaConsumer | None = None
        # Next offset to apply, per partition.
        self._applied: Offsets = {}
        self._progress = asyncio.Condition()
        self.records_applied = 0

    async def on_start(self) -> None:
        await require_topics(self._kafka, [topics.DIRECTORY], "route directory feed")
        consumer = AIOKafkaConsumer(
            **self._kafka.kafka_client_kwargs(),
            client_id=self._client_id,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # Entries are applied as soon as they come (fetch_min_bytes is 1);
            # the wait only sets how often an idle feed asks the broker.
            fetch_max_wait_ms=500,
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
        )
        await consumer.start()
        self._consumer = consumer
        tps = await assign_all(consumer, topics.DIRECTORY)
        started = time.monotonic()
        # Ready only once everything published before the start is applied.
        async for batch in read_to_end(consumer, tps):
            await self._apply(batch)
        for tp in tps:
            self._applied[tp.partition] = await consumer.position(tp)
        log.info(
            "directory loaded: %d entries at %d addresses from %d records in %.1fs",
            len(self.index),
            self.index.addresses,
            self.records_applied,
            time.monotonic() - started,
        )

    async def on_stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    @Service.task
    async def _follow(self) -> None:
        delay = 0.5
        while not self.should_stop:
            consumer = self._consumer
            if consumer is None:
                return
            try:
                batch = await consumer.getmany(timeout_ms=200)
                delay = 0.5
            except KafkaError as exc:
                log.warning("directory feed interrupted, retrying in %.1fs: %s", delay, exc)
                await self.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            await self._apply(batch)

    async def _apply(self, batch: Mapping[TopicPartition, list[object]]) -> None:
        if not batch:
            return
        index = self.index
        for tp, records in batch.items():
            for record in records:
                try:
                    change = decode_record(record.key, record.value)  # type: ignore[attr-defined]
                except (DirectoryError, DecodeError, UnicodeDecodeError) as exc:
                    log.error(
                        "directory record skipped: %s",
                        exc,
                        extra={"topic": tp.topic, "partition": tp.partition, "offset": record.offset},  # type: ignore[attr-defined]
                    )
                    continue
                if isinstance(change, Removal):
                    if change.code is None:
                        assert change.valid_from is not None
                        index.remove_entry(change.address, change.valid_from)
                    else:
                        index.remove_service(change.address, change.code)
                elif isinstance(change, Entry):
                    index.put_entry(change)
                else:
                    index.put_service(change)
            self.records_applied += len(records)
            if records:
                self._applied[tp.partition] = records[-1].offset + 1  # type: ignore[attr-defined]
        async with self._progress:
            self._progress.notify_all()

    def caught_up(self, offsets: Mapping[int, int]) -> bool:
        return all(self._applied.get(p, 0) > o for p, o in offsets.items())

    async def wait_applied(self, offsets: Mapping[int, int], timeout: float) -> bool:
        """True once every (partition, offset) is in the index; False after
        ``timeout`` seconds."""

        async def wait() -> None:
            async with self._progress:
                await self._progress.wait_for(lambda: self.caught_up(offsets))

        try:
            await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            return False
        return True
