"""faust's Kafka transport, with consumer fetches that wait for a batch.

faust builds its aiokafka consumer with aiokafka's ``fetch_min_bytes=1``:
the broker answers a fetch as soon as one record is there, so under a
steady flow each consumer makes a fetch round trip, and a wake-up of the
event loop from faust's consumer thread, for every few records. Profiles of
route and status showed those round trips as a large share of their CPU.
Here a fetch waits until ``KAFKA_FETCH_MIN_BYTES`` are there or
``KAFKA_FETCH_MAX_WAIT_MS`` have passed: fewer, larger fetches, at the cost
of at most that wait per hop when traffic is light.

Selected by the broker URL scheme ``invoicing-kafka://`` (registered as a
``faust.transports`` entry point); everything else is faust's driver.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiokafka
import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

SCHEME = "invoicing-kafka"


@dataclass(frozen=True)
class FetchSettings:
    min_bytes: int
    max_wait_ms: int


_ATTRIBUTE = "invoicing_fetch_settings"


def configure_fetch(app: faust.App, fetch: FetchSettings) -> None:
    setattr(app, _ATTRIBUTE, fetch)


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        fetch: FetchSettings | None = getattr(self.app, _ATTRIBUTE, None)
        if fetch is not None:
            # faust passes no fetch_min_bytes and a fixed 1500 ms wait; aiokafka
            # hands both to its fetcher only when the consumer starts, which
            # has not happened yet.
            consumer._fetch_min_bytes = fetch.min_bytes
            consumer._fetch_max_wait_ms = fetch.max_wait_ms
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    Consumer = _Consumer
