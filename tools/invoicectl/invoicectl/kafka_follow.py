"""Following invoicing.invoice.status.v1 from the CLI (no consumer group:
a CLI reader must not steal partitions from anyone)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]
from invoicing.v1 import events_pb2

from invoicing_common import topics
from invoicing_common.kafka import assign_all
from invoicing_common.settings import KafkaClientSettings


class StatusFollower:
    def __init__(self, kafka: KafkaClientSettings, from_beginning: bool = False) -> None:
        self._consumer = AIOKafkaConsumer(
            **kafka.kafka_client_kwargs(),
            enable_auto_commit=False,
            auto_offset_reset="earliest" if from_beginning else "latest",
            client_id="invoicectl",
        )
        self._from_beginning = from_beginning

    async def start(self) -> None:
        """Connect and pin the start position, so events published after this
        returns are never missed."""
        await self._consumer.start()
        try:
            tps = await assign_all(self._consumer, topics.STATUS)
        except BaseException:
            await self._consumer.stop()
            raise
        if self._from_beginning:
            await self._consumer.seek_to_beginning(*tps)
        else:
            await self._consumer.seek_to_end(*tps)
        for tp in tps:
            await self._consumer.position(tp)

    async def stop(self) -> None:
        await self._consumer.stop()

    async def events(self) -> AsyncIterator[events_pb2.StatusEvent]:
        async for message in self._consumer:
            try:
                yield events_pb2.StatusEvent.FromString(message.value)
            except Exception:  # noqa: BLE001, S112 - a foreign record must not stop a watcher
                continue
