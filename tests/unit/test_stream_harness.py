"""Handlers run in memory (kafka.testing) under the runtime's own policy:
route's handler as the service wires it, and the policy's branches: a
poison record, a broker hiccup on delivery, an output refused for good,
and a batch with one bad record in it."""

from __future__ import annotations

from pathlib import Path

from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError  # type: ignore[import-untyped]
from invoicing.v1 import common_pb2, events_pb2

from invoicing_common import topics
from invoicing_common.kafka import PermanentError, Record, StreamApp, send
from invoicing_common.kafka.testing import StreamHarness
from invoicing_common.settings import ServiceSettings
from invoicing_route import agents
from invoicing_route.directory import DirectoryIndex, check_entry
from invoicing_route.settings import RouteSettings
from invoicing_route.usecases import Directory

BUYER = "512345679"


class _Feed:
    """What the Directory reads to route: an index (no topic in a unit test)."""

    def __init__(self, index: DirectoryIndex) -> None:
        self.index = index


def _route_app() -> tuple[StreamApp, StreamHarness]:
    settings = RouteSettings(
        grpc_tls_cert_file=Path("unused.pem"), grpc_tls_key_file=Path("unused.key"), oidc_issuer="https://issuer"
    )
    index = DirectoryIndex.of([check_entry(siren=BUYER, platform_id="pdp-buyer")], [])
    directory = Directory(None, None, _Feed(index), 1.0)  # type: ignore[arg-type]
    app = StreamApp("invoicing-route", settings)
    agents.register(app, settings, directory)
    return app, StreamHarness(app)


def _validated(invoice_id: str, buyer: str, valid: bool = True) -> bytes:
    return events_pb2.InvoiceValidated(
        event_id=f"validated-{invoice_id}",
        invoice=events_pb2.InvoiceRef(invoice_id=invoice_id),
        valid=valid,
        summary=common_pb2.InvoiceSummary(buyer_endpoint=common_pb2.PartyIdentifier(value=buyer, scheme="0225")),
    ).SerializeToString()


async def test_route_handler_routes_refuses_and_dead_letters_in_memory() -> None:
    _app, stream = _route_app()
    await stream.put(topics.VALIDATED, _validated("inv-1", BUYER), key=b"inv-1")
    await stream.put(topics.VALIDATED, _validated("inv-2", "999999999"), key=b"inv-2")
    await stream.put(topics.VALIDATED, _validated("inv-3", BUYER, valid=False), key=b"inv-3")
    await stream.put(topics.VALIDATED, b"\xff not a protobuf", key=b"inv-4")

    routed = [events_pb2.InvoiceRouted.FromString(s.value) for s in stream.sent(topics.ROUTED)]
    assert [(r.invoice.invoice_id, r.outcome) for r in routed] == [
        ("inv-1", events_pb2.ROUTING_OUTCOME_ROUTED),
        ("inv-2", events_pb2.ROUTING_OUTCOME_REJECTED),
    ]
    assert routed[0].destination_platform == "pdp-buyer"
    assert [s.key for s in stream.sent(topics.ROUTED)] == [b"inv-1", b"inv-2"]
    [letter] = stream.dead_letters()
    assert (letter.source_topic, letter.source_offset, letter.key) == (topics.VALIDATED, 3, b"inv-4")
    assert letter.error_type == "DecodeError" and letter.consumer_group == "invoicing-route"


async def test_a_delivery_that_fails_for_a_while_is_retried_and_one_that_never_can_is_dead_lettered() -> None:
    _app, stream = _route_app()
    stream.producer.fail_sends(topics.ROUTED, KafkaConnectionError("broker away"), KafkaConnectionError("still"))
    await stream.put(topics.VALIDATED, _validated("inv-1", BUYER), key=b"inv-1")
    assert [s.key for s in stream.sent(topics.ROUTED)] == [b"inv-1"]
    assert stream.dead_letters() == []

    stream.producer.fail_sends(topics.ROUTED, MessageSizeTooLargeError())
    await stream.put(topics.VALIDATED, _validated("inv-2", BUYER), key=b"inv-2")
    assert [s.key for s in stream.sent(topics.ROUTED)] == [b"inv-1"]
    [letter] = stream.dead_letters()
    assert (letter.key, letter.error_type) == (b"inv-2", "MessageSizeTooLargeError")


def _settings() -> ServiceSettings:
    return ServiceSettings()


async def test_a_batch_with_one_bad_record_is_handled_one_by_one_and_only_that_record_is_dead_lettered() -> None:
    app = StreamApp("batcher", _settings())
    out = app.topic("test.out")
    calls: list[list[int]] = []

    async def handle(records: list[Record]) -> None:
        calls.append([r.offset for r in records])
        assert all(r.span is not None for r in records)  # each record has its CONSUMER span
        if any(r.value == b"bad" for r in records):
            raise PermanentError("one record is bad")
        for r in records:
            await send(out, "k", r.value or b"")

    app.consume_batches("test.in", handler=handle, batch_size=10, batch_window=0)
    stream = StreamHarness(app)
    await stream.put_batch([stream.record("test.in", v) for v in (b"a", b"bad", b"c")])
    assert calls == [[0, 1, 2], [0], [1], [2]]
    assert [s.value for s in stream.sent("test.out")] == [b"a", b"c"]
    [letter] = stream.dead_letters()
    assert (letter.source_offset, letter.value, letter.error_type) == (1, b"bad", "PermanentError")


async def test_a_transient_fault_retries_the_whole_batch_in_place() -> None:
    app = StreamApp("batcher", _settings())
    attempts: list[int] = []

    async def handle(records: list[Record]) -> None:
        attempts.append(len(records))
        if len(attempts) < 3:
            raise ConnectionResetError("database restarting")

    app.consume_batches("test.in", handler=handle, batch_size=10, batch_window=0)
    stream = StreamHarness(app)
    await stream.put_batch([stream.record("test.in", v) for v in (b"a", b"b")])
    assert attempts == [2, 2, 2]
    assert stream.dead_letters() == []


async def test_an_output_too_large_is_refused_before_it_reaches_the_producer() -> None:
    app = StreamApp("sizer", _settings())
    out = app.topic("test.out", max_bytes=4096)

    async def handle(record: Record) -> None:
        await send(out, "k", (record.value or b"") * 1000)

    app.consume("test.in", handler=handle)
    stream = StreamHarness(app)
    await stream.put("test.in", b"ab")
    await stream.put("test.in", b"0123456789")
    assert len(stream.sent("test.out")) == 1
    [letter] = stream.dead_letters()
    assert (letter.value, letter.error_type) == (b"0123456789", "MessageSizeTooLargeError")
