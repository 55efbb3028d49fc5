"""The shared record handling: poison goes to the DLQ, transient faults retry."""

from __future__ import annotations

from typing import Any

from invoicing.v1 import events_pb2

from invoicing_common.kafka.errors import PermanentError
from invoicing_common.kafka.handling import Record, handle_record


class FakeTopic:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, **kwargs: Any) -> None:
        self.sent.append(kwargs)


def _records(*values: bytes | None) -> list[Record]:
    return [Record("t", 0, offset, b"k", value, []) for offset, value in enumerate(values)]


async def test_permanent_failures_go_to_the_dlq_and_the_stream_moves_on() -> None:
    handled: list[int] = []

    async def handler(record: Record) -> None:
        if record.value == b"bad":
            raise PermanentError("cannot use this")
        handled.append(record.offset)

    dlq = FakeTopic()
    for record in _records(b"ok", b"bad", b"ok"):
        await handle_record(record, handler, dlq=dlq, consumer_group="g")
    assert handled == [0, 2]
    assert len(dlq.sent) == 1
    letter = events_pb2.DeadLetter.FromString(dlq.sent[0]["value"])
    assert (letter.source_topic, letter.source_offset, letter.value) == ("t", 1, b"bad")
    assert letter.error_type == "PermanentError" and letter.consumer_group == "g"


async def test_transient_failures_are_retried_in_place() -> None:
    attempts: list[int] = []

    async def handler(record: Record) -> None:
        attempts.append(record.offset)
        if len(attempts) < 3:
            raise ConnectionRefusedError("database restarting")

    dlq = FakeTopic()
    for record in _records(b"ok"):
        await handle_record(record, handler, dlq=dlq, consumer_group="g", retry_delay=0)
    assert attempts == [0, 0, 0]
    assert dlq.sent == []


def test_decode_event_refuses_what_is_not_a_pipeline_event() -> None:
    import pytest

    from invoicing_common.kafka import PermanentError, decode_event

    def record(value: bytes | None) -> Record:
        return Record("t", 0, 0, b"k", value, [])

    good = events_pb2.InvoiceReceived(invoice=events_pb2.InvoiceRef(invoice_id="inv-1"))
    assert decode_event(record(good.SerializeToString()), events_pb2.InvoiceReceived).invoice.invoice_id == "inv-1"
    for value in (None, events_pb2.InvoiceReceived(event_id="e").SerializeToString()):
        with pytest.raises(PermanentError):
            decode_event(record(value), events_pb2.InvoiceReceived)


async def test_a_database_restarting_or_a_statement_timing_out_is_retried_not_dead_lettered() -> None:

    import asyncpg  # type: ignore[import-untyped]

    faults: list[BaseException] = [
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        TimeoutError(),  # a command_timeout
    ]

    async def handler(record: Record) -> None:
        if faults:
            raise faults.pop(0)

    dlq = FakeTopic()
    await handle_record(_records(b"ok")[0], handler, dlq=dlq, consumer_group="g", retry_delay=0)
    assert faults == [] and dlq.sent == []
