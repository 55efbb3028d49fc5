"""Kafka plumbing: producer settings, record headers, topic creation, DLQ,
and finite reads of a whole topic by group-less consumers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from aiokafka.errors import TopicAlreadyExistsError  # type: ignore[import-untyped]
from aiokafka.structs import ConsumerRecord  # type: ignore[import-untyped]
from google.protobuf.timestamp_pb2 import Timestamp
from invoicing.v1 import events_pb2
from mode import Service

from invoicing_common import topics
from invoicing_common.ids import stage_event_id
from invoicing_common.settings import KafkaClientSettings

log = logging.getLogger(__name__)


def producer(kafka: KafkaClientSettings, client_id: str, linger_ms: int = 5) -> AIOKafkaProducer:
    """A producer whose acknowledged sends survive a broker crash.

    acks=all plus idempotence: a retried send never duplicates a record.
    5 ms of linger suits callers that wait for each acknowledgement.
    """
    return AIOKafkaProducer(
        **kafka.kafka_client_kwargs(),
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        max_request_size=topics.MAX_MESSAGE_BYTES,
        linger_ms=linger_ms,
    )


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


async def ensure_topics(
    kafka: KafkaClientSettings, partitions: int, names: Sequence[str] = topics.ALL_TOPICS
) -> list[str]:
    """Create missing topics with the broker's defaults; returns the names
    created. For throw-away topics (tests, the bench's Kafka baseline); the
    platform's own are provisioned by topic_admin from topics.toml."""
    admin = AIOKafkaAdminClient(**kafka.kafka_client_kwargs(), client_id="invoicing-bootstrap")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        created: list[str] = []
        for name in missing:
            config = {"max.message.bytes": str(topics.MAX_MESSAGE_BYTES)}
            if name in topics.COMPACTED_TOPICS:
                config["cleanup.policy"] = "compact"
            try:
                await admin.create_topics([NewTopic(name, partitions, 1, topic_configs=config)])
                created.append(name)
            except TopicAlreadyExistsError:
                pass
        return created
    finally:
        await admin.close()


class MissingTopics(RuntimeError):
    """A service's topics are not all there: it cannot start."""


async def require_topics(kafka: KafkaClientSettings, names: Sequence[str], who: str) -> None:
    """Stop the start of ``who`` unless every topic of ``names`` exists (and
    its principal may see it). Topics are provisioned, never created by the
    services: deploy/kafka/topics.toml, `invoicectl topics apply`."""
    from invoicing_common.topic_admin import missing

    absent = await missing(kafka, names)
    if absent:
        raise MissingTopics(
            f"{who}: topic(s) {', '.join(absent)} missing, or not readable by Kafka principal "
            f"{kafka.kafka_sasl_username or '(anonymous)'}; provision them with `invoicectl topics apply` "
            "(deploy/kafka/topics.toml) and check the ACLs (deploy/kafka/principals.toml)"
        )


def dead_letter(
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    error: BaseException,
    consumer_group: str,
) -> events_pb2.DeadLetter:
    failed_at = Timestamp()
    failed_at.FromDatetime(datetime.now(UTC))
    return events_pb2.DeadLetter(
        # Same source record -> same id, so a redelivered poison record is
        # recognisable as one failure in the DLQ.
        event_id=stage_event_id(f"{topic}/{partition}/{offset}", f"dlq:{consumer_group}"),
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        key=key or b"",
        value=value or b"",
        error_type=type(error).__name__,
        error=str(error)[:2000],
        consumer_group=consumer_group,
        failed_at=failed_at,
    )


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
