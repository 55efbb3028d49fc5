"""An in-memory harness for stream handlers, in the spirit of faust's
``test_context``: no broker, the same error policy.

    app = StreamApp("route", settings)
    agents.register(app, settings, directory)      # the service's own wiring
    stream = StreamHarness(app)
    outcome = await stream.put(topics.VALIDATED, event.SerializeToString(), key=b"inv-1")
    [routed] = stream.sent(topics.ROUTED)

``put`` runs the handler registered on the app through ``StreamApp.process``
(what the consume loop runs for each record or batch): transient faults
are retried, permanent ones dead-lettered, and what the handler sent is
kept, acknowledged at once, instead of going to Kafka. A send can be made
to fail (``fail_sends``) to exercise the delivery side of the policy. For
unit tests of handler logic; integration tests use the real broker.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from invoicing.v1 import events_pb2

from invoicing_common import topics
from invoicing_common.kafka.consume import StreamApp
from invoicing_common.kafka.handling import Record


@dataclass(frozen=True)
class Sent:
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    partition: int
    offset: int


@dataclass(frozen=True)
class _Metadata:
    topic: str
    partition: int
    offset: int


class MemoryProducer:
    """Takes the place of the app's AIOKafkaProducer: every send is
    acknowledged at once (or fails as told) and kept."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self._offsets: dict[str, int] = defaultdict(int)
        self._failures: dict[str, list[BaseException]] = defaultdict(list)

    def fail_sends(self, topic: str, *errors: BaseException) -> None:
        """The next sends to ``topic`` fail with ``errors``, in order."""
        self._failures[topic].extend(errors)

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> asyncio.Future[Any]:
        delivery: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._failures[topic]:
            delivery.set_exception(self._failures[topic].pop(0))
            return delivery
        offset = self._offsets[topic]
        self._offsets[topic] += 1
        self.sent.append(Sent(topic, key, value or b"", list(headers or []), partition or 0, offset))
        delivery.set_result(_Metadata(topic, partition or 0, offset))
        return delivery

    async def stop(self) -> None:
        return None


class StreamHarness:
    """Feeds records to an app's registered handler, in memory."""

    def __init__(self, app: StreamApp, retry_delay: float = 0.0) -> None:
        self.app = app
        self.producer = MemoryProducer()
        app.use_producer(self.producer)  # type: ignore[arg-type]
        app.retry_delay = retry_delay
        self._offsets: dict[tuple[str, int], int] = defaultdict(int)

    def record(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int = 0,
    ) -> Record:
        """A record as the consumer would fetch it (offsets count up per partition)."""
        offset = self._offsets[(topic, partition)]
        self._offsets[(topic, partition)] += 1
        return Record(topic, partition, offset, key, value, list(headers or []))

    async def put(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int = 0,
    ) -> Record:
        """Handle one record as the consume loop would; returns it."""
        record = self.record(topic, value, key, headers, partition)
        await self.app.process([record])
        return record

    async def put_batch(self, records: list[Record]) -> None:
        """Handle ``records`` as one fetch (one batch for a batch handler)."""
        await self.app.process(records)

    def sent(self, topic: str) -> list[Sent]:
        return [s for s in self.producer.sent if s.topic == topic]

    def dead_letters(self) -> list[events_pb2.DeadLetter]:
        return [events_pb2.DeadLetter.FromString(s.value) for s in self.sent(topics.DLQ)]
