"""Dead letters: read them, and put them back on their source topic.

A dead letter is named by its position on invoicing.invoice.dlq.v1,
"<partition>:<offset>": the same source record dead-lettered again after a
replay is a new letter with a new position. A replay publishes the source
record again (topic, key, value and headers as they were), then writes a
``DeadLetterReplay`` keyed by the letter's position on the compacted
invoicing.invoice.dlq-replays.v1: a letter with a replay record is not
replayed again, so replaying twice has one effect. The stages' event ids
make a replayed record that had partly succeeded harmless.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp
from invoicing.v1 import events_pb2

from invoicing_common import topics
from invoicing_common.kafka import assign_all, producer, read_to_end
from invoicing_common.settings import KafkaClientSettings

# Marks a record put back by a replay (the letter it came from).
REPLAY_HEADER = "invoicing-replay-of"


@dataclass(frozen=True)
class Letter:
    position: str  # "<partition>:<offset>" on the DLQ
    letter: events_pb2.DeadLetter
    headers: list[tuple[str, bytes]]
    replay: events_pb2.DeadLetterReplay | None = None

    @property
    def source(self) -> tuple[str, int, int]:
        return (self.letter.source_topic, self.letter.source_partition, self.letter.source_offset)

    def summary_json(self) -> dict[str, Any]:
        d = self.letter
        return {
            "id": self.position,
            "event_id": d.event_id,
            "failed_at": _iso(d.failed_at),
            "consumer_group": d.consumer_group,
            "source_topic": d.source_topic,
            "source_partition": d.source_partition,
            "source_offset": d.source_offset,
            "key": d.key.decode("utf-8", errors="replace"),
            "error_type": d.error_type,
            "error": d.error,
            "replayed_at": _iso(self.replay.replayed_at) if self.replay is not None else None,
        }

    def detail_json(self) -> dict[str, Any]:
        out = self.summary_json()
        out["value_bytes"] = len(self.letter.value)
        out["headers"] = sorted({name for name, _ in self.headers})
        if self.replay is not None:
            out["replay"] = {
                "partition": self.replay.partition,
                "offset": self.replay.offset,
                "replayed_by": self.replay.replayed_by,
            }
        return out


def _iso(ts: Timestamp) -> str | None:
    if not ts.seconds and not ts.nanos:
        return None
    return ts.ToDatetime(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def _consumer(kafka: KafkaClientSettings) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        **kafka.kafka_client_kwargs(),
        enable_auto_commit=False,
        max_partition_fetch_bytes=topics.DLQ_MAX_MESSAGE_BYTES,
        fetch_max_bytes=2 * topics.DLQ_MAX_MESSAGE_BYTES,
    )


async def replays(kafka: KafkaClientSettings) -> dict[str, events_pb2.DeadLetterReplay]:
    """Every replay recorded, by the letter's position."""
    consumer = _consumer(kafka)
    await consumer.start()
    found: dict[str, events_pb2.DeadLetterReplay] = {}
    try:
        tps = await assign_all(consumer, topics.DLQ_REPLAYS)
        async for batch in read_to_end(consumer, tps):
            for records in batch.values():
                for record in records:
                    if record.value is None:
                        continue
                    try:
                        replay = events_pb2.DeadLetterReplay.FromString(record.value)
                    except DecodeError:
                        continue
                    found[replay.dead_letter] = replay
    finally:
        await consumer.stop()
    return found


async def letters(kafka: KafkaClientSettings) -> list[Letter]:
    """Every dead letter on the DLQ (its retention: 30 days), oldest first
    per partition, with its replay when there was one."""
    done = await replays(kafka)
    consumer = _consumer(kafka)
    await consumer.start()
    out: list[Letter] = []
    try:
        tps = await assign_all(consumer, topics.DLQ)
        async for batch in read_to_end(consumer, tps):
            for records in batch.values():
                for record in records:
                    position = f"{record.partition}:{record.offset}"
                    try:
                        letter = events_pb2.DeadLetter.FromString(record.value or b"")
                    except DecodeError:
                        continue  # not a dead letter: nothing to replay
                    out.append(Letter(position, letter, list(record.headers or []), done.get(position)))
    finally:
        await consumer.stop()
    out.sort(key=lambda item: (item.letter.failed_at.seconds, item.letter.failed_at.nanos, item.position))
    return out


@dataclass(frozen=True)
class ReplayOutcome:
    letter: Letter
    action: str  # "replayed", "would replay", "already replayed", "same source as <id>"
    partition: int | None = None
    offset: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.letter.position,
            "source_topic": self.letter.letter.source_topic,
            "key": self.letter.letter.key.decode("utf-8", errors="replace"),
            "action": self.action,
            "partition": self.partition,
            "offset": self.offset,
        }


async def replay(
    kafka: KafkaClientSettings,
    chosen: Sequence[Letter],
    *,
    dry_run: bool,
    progress: Callable[[int], None] = lambda _n: None,
) -> list[ReplayOutcome]:
    """Put ``chosen`` back on their source topics, once each. Letters of one
    source record (dead-lettered by two stages) share one publication."""
    outcomes: list[ReplayOutcome] = []
    by_source: dict[tuple[str, int, int], ReplayOutcome] = {}
    send: AIOKafkaProducer | None = None
    if not dry_run:
        send = producer(kafka, "invoicectl-dlq-replay")
        await send.start()
    who = kafka.kafka_sasl_username or os.environ.get("USER", "") or "unknown"
    try:
        for item in chosen:
            if item.replay is not None:
                outcomes.append(ReplayOutcome(item, "already replayed", item.replay.partition, item.replay.offset))
            elif item.letter.source_topic not in topics.PIPELINE_TOPICS or item.letter.source_topic == topics.DLQ:
                outcomes.append(ReplayOutcome(item, f"not replayable: source topic {item.letter.source_topic!r}"))
            elif dry_run:
                outcomes.append(ReplayOutcome(item, "would replay"))
            elif item.source in by_source:
                first = by_source[item.source]
                await _record(send, item, first.partition, first.offset, who)
                outcomes.append(ReplayOutcome(item, f"same source as {first.letter.position}", first.partition,
                                              first.offset))  # fmt: skip
            else:
                assert send is not None
                headers = [(k, v) for k, v in item.headers if k != REPLAY_HEADER]
                headers.append((REPLAY_HEADER, item.position.encode()))
                metadata = await send.send_and_wait(
                    item.letter.source_topic,
                    value=item.letter.value,
                    key=item.letter.key or None,
                    headers=headers,
                )
                await _record(send, item, metadata.partition, metadata.offset, who)
                outcome = ReplayOutcome(item, "replayed", metadata.partition, metadata.offset)
                by_source[item.source] = outcome
                outcomes.append(outcome)
            progress(1)
    finally:
        if send is not None:
            await send.stop()
    return outcomes


async def _record(send: AIOKafkaProducer | None, item: Letter, partition: int | None, offset: int | None,
                  who: str) -> None:  # fmt: skip
    assert send is not None
    replayed_at = Timestamp()
    replayed_at.FromDatetime(datetime.now(UTC))
    record = events_pb2.DeadLetterReplay(
        dead_letter=item.position,
        dead_letter_event_id=item.letter.event_id,
        source_topic=item.letter.source_topic,
        partition=partition or 0,
        offset=offset or 0,
        replayed_by=who,
        replayed_at=replayed_at,
    )
    await send.send_and_wait(topics.DLQ_REPLAYS, value=record.SerializeToString(), key=item.position.encode())
