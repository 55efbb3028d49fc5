"""Kafka clients: the producer every service uses, record headers, and
finite reads of a whole topic by group-less consumers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # type: ignore[import-untyped]
from aiokafka.structs import ConsumerRecord  # type: ignore[import-untyped]
from mode import Service

from invoicing_common import topics
from invoicing_common.settings import KafkaClientSettings

log = logging.getLogger(__name__)


def producer(kafka: KafkaClientSettings, client_id: str, linger_ms: int = 5, **options: Any) -> AIOKafkaProducer:
    """A producer whose acknowledged sends survive a broker crash.

    acks=all plus idempotence: a retried send never duplicates a record.
    5 ms of linger suits callers that wait for each acknowledgement.
    """
    return AIOKafkaProducer(
        **kafka.kafka_client_kwargs(),
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        # Room for a dead letter; other records are held to MAX_MESSAGE_BYTES
        # before they are sent (OutTopic), not refused by the broker.
        max_request_size=topics.DLQ_MAX_MESSAGE_BYTES,
        linger_ms=linger_ms,
        **options,
    )


def set_linger(producer: AIOKafkaProducer, linger_ms: int) -> None:
    """Change a running producer's linger for the batches it starts next.

    aiokafka takes the linger only at construction; its accumulator gives
    each new batch the value of this attribute (the pinned version's name is
    checked by tests/unit/test_linger_pace.py). A producer without one (the
    in-memory harness's) is left as it is."""
    accumulator = getattr(producer, "_message_accumulator", None)
    if accumulator is not None:
        accumulator._linger_time = linger_ms / 1000


def headers_to_carrier(headers: Iterable[tuple[str, bytes]] | None) -> dict[str, str]:
    return {k: v.decode("latin-1") for k, v in (headers or ())}


async def assign_all(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """Assign every partition of ``topic`` to a consumer without a group
    (readers that must see all of a topic, or must not take partitions from
    a service). aiokafka has no public call for a topic's partitions without
    subscribing; the client's metadata fetch is what ``topics()`` uses."""
    cluster = await consumer._client.fetch_all_metadata()
    partitions = sorted(cluster.partitions_for_topic(topic) or ())
    if not partitions:
        raise RuntimeError(f"topic {topic} not found; is the stack up (make up)?")
    tps = [TopicPartition(topic, p) for p in partitions]
    consumer.assign(tps)
    return tps


async def read_to_end(
    consumer: AIOKafkaConsumer,
    tps: Sequence[TopicPartition],
    since_ms: int | None = None,
    max_records: int | None = None,
) -> AsyncIterator[Mapping[TopicPartition, list[ConsumerRecord]]]:
    """Batches (as ``getmany`` returns them) from each partition's beginning,
    or from its first record at or after ``since_ms``, up to its end offset
    at call time: a finite, deterministic read."""
    ends = await consumer.end_offsets(list(tps))
    # Explicit offsets and seek(): seek_to_beginning() is lazy, and a
    # position() asked right after it can still answer with the reset policy.
    if since_ms is None:
        starts = await consumer.beginning_offsets(list(tps))
        for tp in tps:
            consumer.seek(tp, starts[tp])
    else:
        found = await consumer.offsets_for_times(dict.fromkeys(tps, since_ms))
        for tp in tps:
            at = found.get(tp)
            consumer.seek(tp, at.offset if at is not None else ends[tp])
    remaining = {tp for tp in tps if await consumer.position(tp) < ends[tp]}
    while remaining:
        batch = await consumer.getmany(*remaining, timeout_ms=1000, max_records=max_records)
        if batch:
            yield batch
        for tp in list(remaining):
            if await consumer.position(tp) >= ends[tp]:
                remaining.discard(tp)


class ProducerService(Service):
    """Owns an idempotent producer; usable once the service has started
    (aiokafka needs a running loop to build it)."""

    def __init__(self, kafka: KafkaClientSettings, client_id: str, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._kafka = kafka
        self._client_id = client_id
        self._producer: AIOKafkaProducer | None = None

    @property
    def kafka(self) -> KafkaClientSettings:
        return self._kafka

    @property
    def producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("producer not started")
        return self._producer

    async def on_start(self) -> None:
        self._producer = producer(self._kafka, self._client_id)
        await self._producer.start()

    async def on_stop(self) -> None:
        if self._producer is not None:
            # Flushes pending sends before closing.
            await self._producer.stop()
            self._producer = None
