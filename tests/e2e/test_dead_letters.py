"""A record that cannot be decoded goes to the DLQ with its error, and the
partition keeps moving."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]
from invoicing.v1 import events_pb2

from invoicing_common import topics
from invoicing_common.kafka import assign_all
from invoicing_common.settings import KafkaClientSettings
from tests.support import Stack, collect_until_final, submit, unique_invoice

pytestmark = pytest.mark.stack


async def _dlq_consumer(kafka: KafkaClientSettings) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(**kafka.kafka_client_kwargs(), enable_auto_commit=False)
    await consumer.start()
    tps = await assign_all(consumer, topics.DLQ)
    await consumer.seek_to_end(*tps)
    for tp in tps:
        await consumer.position(tp)
    return consumer


async def test_poison_records_land_in_the_dlq_and_later_records_still_flow(
    stack: Stack, status_follower: object
) -> None:
    dlq = await _dlq_consumer(stack.kafka)
    producer = AIOKafkaProducer(**stack.kafka.kafka_client_kwargs(), acks="all", enable_idempotence=True)
    await producer.start()
    poisoned: dict[tuple[int, int], bytes] = {}
    try:
        partitions = sorted(await producer.partitions_for(topics.RECEIVED))
        # Not protobuf at all, and protobuf without the fields a stage needs:
        # one of each on every partition, so whatever partition the next
        # invoice lands on sits behind poison.
        for p in partitions:
            for value in (b"\xff\xfe not protobuf \x00", events_pb2.InvoiceReceived(event_id="x").SerializeToString()):
                meta = await producer.send_and_wait(
                    topics.RECEIVED, value=value, key=f"poison-{uuid.uuid4()}".encode(), partition=p
                )
                poisoned[(meta.partition, meta.offset)] = value
    finally:
        await producer.stop()

    doc, _ = unique_invoice("ubl-invoice-valid.xml")
    after = await submit(stack.ingest, doc, "after-poison.xml")
    events = await collect_until_final(status_follower, {after.invoice_id})  # type: ignore[arg-type]
    assert events[after.invoice_id][-1].status_code in {201, 203}

    # Both consumers of the received topic (validate and status) dead-letter
    # each poison record once.
    expected = {(group, p, o) for (p, o) in poisoned for group in ("invoicing-validate", "invoicing-status")}
    found: set[tuple[str, int, int]] = set()

    async def read() -> None:
        async for message in dlq:
            letter = events_pb2.DeadLetter.FromString(message.value)
            key = (letter.consumer_group, letter.source_partition, letter.source_offset)
            if letter.source_topic == topics.RECEIVED and key in expected:
                assert letter.value == poisoned[(letter.source_partition, letter.source_offset)]
                assert letter.error_type and letter.error
                found.add(key)
                if found == expected:
                    return

    try:
        await asyncio.wait_for(read(), 60)
    finally:
        await dlq.stop()
    assert found == expected
