"""faust app factory and the record-processing loop every agent shares.

Agents stay thin: they hand each record to a plain async function. This
module decides what happens when that function fails: transient faults
(broker or database unreachable) are retried in place so nothing is lost
and order is kept; anything else sends the record to the DLQ with the error
so the partition keeps moving.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
import faust
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]
from google.protobuf.message import DecodeError, Message
from opentelemetry import propagate, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from invoicing_common import topics, transport
from invoicing_common.kafka import dead_letter, headers_to_carrier
from invoicing_common.settings import ServiceSettings
from invoicing_common.telemetry import DLQ_RECORDS, consume_span_attributes, meter, produce_span

log = logging.getLogger(__name__)
tracer = trace.get_tracer("invoicing_common.streams")


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


class PermanentError(Exception):
    """The record can never be processed; it goes to the DLQ."""


TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    KafkaError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.CannotConnectNowError,
)

# Failures that will not go away by retrying: the record goes to the DLQ.
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    DecodeError,
    PermanentError,
    ValueError,
    KeyError,
    TypeError,
    UnicodeDecodeError,
)

Handler = Callable[[Record], Awaitable[None]]
T = TypeVar("T")


EventT = TypeVar("EventT", bound=Message)


def decode_event(record: Record, message_type: type[EventT]) -> EventT:
    """Decode a pipeline event; a record that is not one is a PermanentError
    (it goes to the DLQ). Every pipeline event names its invoice."""
    if record.value is None:
        raise PermanentError("record has no value")
    event = message_type.FromString(record.value)
    invoice = getattr(event, "invoice", None)
    if invoice is None or not invoice.invoice_id:
        raise PermanentError(f"{message_type.DESCRIPTOR.name} without invoice.invoice_id")
    return event


def record_from(message: Any) -> Record:
    return Record(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
        headers=list(message.headers or []),
    )


def consumer_span(record: Record, consumer_group: str) -> Span:
    """A started CONSUMER span for ``record``, child of the producer's span
    found in its headers (faust consumes on another thread: contextvars do
    not follow, so the context is re-extracted here). The caller ends it."""
    return tracer.start_span(
        f"process {record.topic}",
        context=propagate.extract(headers_to_carrier(record.headers)),
        kind=SpanKind.CONSUMER,
        attributes=consume_span_attributes(record.topic, record.partition, record.offset, consumer_group, record.key),
    )


async def retry_transient(operation: Callable[[], Awaitable[T]], what: str, retry_delay: float = 0.5) -> T:
    """Run ``operation`` until it succeeds or fails for a non-transient
    reason: a broker or database outage holds the partition, never skips it."""
    delay = retry_delay
    while True:
        try:
            return await operation()
        except TRANSIENT_ERRORS as exc:
            log.warning("transient failure in %s, retrying in %.1fs: %s", what, delay, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


def _faust_datadir() -> str:
    base = os.path.join(tempfile.gettempdir(), "invoicing-faust")
    os.makedirs(base, exist_ok=True)  # faust creates only the last level
    return os.path.join(base, "{conf.id}")


def create_app(app_id: str, settings: ServiceSettings, **overrides: Any) -> faust.App:
    """A faust app speaking raw bytes: values are protobuf, decoded by us."""
    conf: dict[str, Any] = {
        "broker": f"{transport.SCHEME}://{settings.kafka_bootstrap_servers}",
        "key_serializer": "raw",
        "value_serializer": "raw",
        "web_enabled": False,
        "store": "memory://",
        "topic_partitions": settings.topic_partitions,
        "topic_replication_factor": 1,
        "producer_acks": -1,
        "producer_max_request_size": topics.MAX_MESSAGE_BYTES,
        "consumer_max_fetch_size": topics.MAX_MESSAGE_BYTES,
        "consumer_auto_offset_reset": "earliest",
        "broker_commit_interval": 1.0,
        "producer_linger": settings.kafka_producer_linger_ms / 1000,
        "worker_redirect_stdouts": False,
        # Tables live in memory; faust still wants a data folder, kept out of
        # the working directory.
        "datadir": _faust_datadir(),
        "broker_session_timeout": settings.kafka_session_timeout_seconds,
        "broker_heartbeat_interval": max(1.0, settings.kafka_session_timeout_seconds / 3),
    }
    conf.update(overrides)
    app = faust.App(app_id, **conf)
    transport.configure_fetch(
        app, transport.FetchSettings(settings.kafka_fetch_min_bytes, settings.kafka_fetch_max_wait_ms)
    )
    return app


def raw_topic(app: faust.App, *names: str) -> faust.TopicT:
    return app.topic(*names, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")


async def send(topic: faust.TopicT, key: str, value: bytes, message_id: str = "") -> None:
    """Queue a record under a PRODUCER span whose context travels in the
    headers. faust flushes the producer before committing offsets, so the
    source record is only committed once this one is acknowledged."""
    with produce_span(topic.get_topic_name(), key, message_id) as headers:
        await topic.send(key=key.encode(), value=value, headers=headers)


async def process(
    stream: AsyncIterator[Any],
    handler: Handler,
    *,
    dlq: faust.TopicT,
    consumer_group: str,
    retry_delay: float = 0.5,
) -> AsyncIterator[None]:
    """Run ``handler`` for each event of a faust stream (``stream.events()``)."""
    async for event in stream:
        message = event.message
        record = record_from(message)
        with trace.use_span(consumer_span(record, consumer_group), end_on_exit=True):
            await _handle_with_retry(record, handler, dlq=dlq, consumer_group=consumer_group, retry_delay=retry_delay)
        yield None


async def _handle_with_retry(
    record: Record, handler: Handler, *, dlq: faust.TopicT, consumer_group: str, retry_delay: float
) -> None:
    delay = retry_delay
    while True:
        try:
            await handler(record)
            return
        except TRANSIENT_ERRORS as exc:
            # Keep the partition where it is: skipping would lose the record.
            log.warning(
                "transient failure, retrying in %.1fs: %s",
                delay,
                exc,
                extra={"topic": record.topic, "partition": record.partition, "offset": record.offset},
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
        except PERMANENT_ERRORS as exc:
            await send_to_dlq(record, exc, dlq=dlq, consumer_group=consumer_group)
            return
        except Exception as exc:
            log.exception(
                "unexpected failure",
                extra={"topic": record.topic, "partition": record.partition, "offset": record.offset},
            )
            await send_to_dlq(record, exc, dlq=dlq, consumer_group=consumer_group)
            return


async def send_to_dlq(record: Record, exc: BaseException, *, dlq: faust.TopicT, consumer_group: str) -> None:
    letter = dead_letter(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value,
        error=exc,
        consumer_group=consumer_group,
    )
    log.error(
        "record sent to DLQ: %s: %s",
        type(exc).__name__,
        exc,
        extra={"topic": record.topic, "partition": record.partition, "offset": record.offset},
    )
    DLQ_RECORDS.add(1, {"source_topic": record.topic, "consumer_group": consumer_group})
    trace.get_current_span().set_status(Status(StatusCode.ERROR, f"sent to DLQ: {type(exc).__name__}"))
    await dlq.send(key=record.key, value=letter.SerializeToString(), headers=record.headers)


def register_lag_gauge(app: faust.App) -> None:
    """messaging.kafka.consumer.lag per topic and partition: the high
    watermark minus the next offset this instance will read."""

    def observe(_options: CallbackOptions) -> Iterable[Observation]:
        consumer = getattr(app, "_consumer", None)
        if consumer is None:
            return []
        observations = []
        for tp in consumer.assignment():
            try:
                highwater = consumer.highwater(tp)
            except Exception:  # noqa: BLE001, S112 - partition being revoked
                continue
            if highwater is None:
                continue
            read = consumer._read_offset.get(tp)
            position = read + 1 if read is not None else highwater
            observations.append(
                Observation(
                    max(0, highwater - position),
                    {
                        "messaging.destination.name": tp.topic,
                        "messaging.destination.partition.id": str(tp.partition),
                        "messaging.consumer.group.name": app.conf.id,
                    },
                )
            )
        return observations

    meter().create_observable_gauge(
        "messaging.kafka.consumer.lag", callbacks=[observe], unit="{message}", description="Consumer lag"
    )
