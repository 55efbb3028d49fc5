"""One error policy for every handler, per record or per batch.

A handler is a plain async function. Around it: a CONSUMER span per record
(child of the producer's span found in the record's headers), transient
faults retried in place with a bounded backoff, and a record that cannot
succeed sent to the DLQ with the reason. A batch that fails for a permanent
reason is handled again record by record, so only the record at fault goes
to the DLQ. These functions have no consumer and no broker: the stream
runtime (``consume``) and the in-memory harness (``testing``) share them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

from google.protobuf.message import Message
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from invoicing_common.kafka.clients import headers_to_carrier
from invoicing_common.kafka.dlq import dead_letter
from invoicing_common.kafka.errors import Backoff, Fault, PermanentError, classify, retry_transient
from invoicing_common.telemetry import DLQ_RECORDS, consume_span_attributes

log = logging.getLogger(__name__)
tracer = trace.get_tracer("invoicing_common.kafka")


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    # The record's CONSUMER span while it is handled; per-record work in a
    # batch handler runs under it (``trace.use_span(record.span)``).
    span: Span | None = field(default=None, compare=False, repr=False)

    @property
    def where(self) -> str:
        return f"{self.topic}/{self.partition}@{self.offset}"


Handler = Callable[[Record], Awaitable[None]]
BatchHandler = Callable[[list[Record]], Awaitable[None]]
EventT = TypeVar("EventT", bound=Message)


class Sink(Protocol):
    """Where dead letters go: a topic of the app, or the harness's memory."""

    async def send(
        self, *, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]] | None = None
    ) -> None: ...


def record_from(message: Any) -> Record:
    return Record(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
        headers=list(message.headers or []),
    )


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


def consumer_span(record: Record, consumer_group: str) -> Span:
    """A started CONSUMER span for ``record``, child of the producer's span
    found in its headers (the producer ran in another process: the context
    comes from the headers only). The caller ends it."""
    return tracer.start_span(
        f"process {record.topic}",
        context=propagate.extract(headers_to_carrier(record.headers)),
        kind=SpanKind.CONSUMER,
        attributes=consume_span_attributes(record.topic, record.partition, record.offset, consumer_group, record.key),
    )


def with_span(record: Record, consumer_group: str) -> Record:
    return replace(record, span=consumer_span(record, consumer_group))


async def send_to_dlq(record: Record, exc: BaseException, *, dlq: Sink, consumer_group: str) -> None:
    """Dead-letter ``record`` with the reason. Waits out a broker outage:
    the record's offset moves only once its dead letter is acknowledged."""
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
    span = record.span or trace.get_current_span()
    span.set_status(Status(StatusCode.ERROR, f"sent to DLQ: {type(exc).__name__}"))
    value = letter.SerializeToString()
    await retry_transient(
        lambda: dlq.send(key=record.key, value=value, headers=record.headers), f"dead-lettering {record.where}"
    )
    DLQ_RECORDS.add(1, {"source_topic": record.topic, "consumer_group": consumer_group})


def _log_failure(record: Record, exc: BaseException) -> None:
    extra = {"topic": record.topic, "partition": record.partition, "offset": record.offset}
    if isinstance(exc, PermanentError):
        log.warning("permanent failure: %s", exc, extra=extra)
    else:
        # A failure the handler did not name: the trace is what a fix needs.
        log.error("permanent failure: %s: %s", type(exc).__name__, exc, exc_info=exc, extra=extra)


async def handle_record(
    record: Record, handler: Handler, *, dlq: Sink, consumer_group: str, retry_delay: float = 0.5
) -> None:
    """Run ``handler`` for one record under its CONSUMER span: transient
    faults are retried in place (the partition holds, order is kept), a
    permanent one sends the record to the DLQ (the partition moves on).
    Raises only if the dead letter itself cannot be written."""
    own_span = record.span is None
    if own_span:
        record = with_span(record, consumer_group)
    assert record.span is not None
    try:
        with trace.use_span(record.span, end_on_exit=False):
            backoff = Backoff(retry_delay)
            while True:
                try:
                    await handler(record)
                    return
                except Exception as exc:  # noqa: BLE001 - the policy decides: retry or DLQ
                    if classify(exc) is Fault.TRANSIENT:
                        # Keep the partition where it is: skipping would lose the record.
                        log.warning(
                            "transient failure, retrying in %.1fs: %r",
                            backoff.next_delay,
                            exc,
                            extra={"topic": record.topic, "partition": record.partition, "offset": record.offset},
                        )
                        await backoff.wait()
                        continue
                    _log_failure(record, exc)
                    await send_to_dlq(record, exc, dlq=dlq, consumer_group=consumer_group)
                    return
    finally:
        if own_span:
            record.span.end()


async def handle_batch(
    records: list[Record], handler: BatchHandler, *, dlq: Sink, consumer_group: str, retry_delay: float = 0.5
) -> None:
    """Run ``handler`` for a batch. Transient faults retry the batch; a
    permanent one hands the batch back to ``handler`` one record at a time,
    under the per-record policy, so only the record at fault is dead-lettered.
    Records carry their CONSUMER spans (the caller starts and ends them)."""
    backoff = Backoff(retry_delay)
    while True:
        try:
            await handler(records)
            return
        except Exception as exc:  # noqa: BLE001 - the policy decides: retry, or one by one
            if classify(exc) is Fault.TRANSIENT:
                log.warning("transient failure of a batch of %d, retrying in %.1fs: %r", len(records),
                            backoff.next_delay, exc)  # fmt: skip
                await backoff.wait()
                continue
            if len(records) == 1:
                _log_failure(records[0], exc)
                await send_to_dlq(records[0], exc, dlq=dlq, consumer_group=consumer_group)
                return
            log.warning("batch of %d failed (%s: %s); handling its records one by one", len(records),
                        type(exc).__name__, exc)  # fmt: skip
            break
    for record in records:
        await handle_record(
            record,
            lambda one: handler([one]),
            dlq=dlq,
            consumer_group=consumer_group,
            retry_delay=retry_delay,
        )
