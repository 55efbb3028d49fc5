"""The status store's side of the exchange with other platforms, on the
stack's PostgreSQL (a fresh schema per test): the peer an invoice is shared
with recorded from the pipeline's events, the destination's acknowledgement
applied once as 202 by both write paths, a peer's CDAR message found and
applied through ExchangeService, and the exchange stage reading the history
row it sends."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from invoicing.v1 import common_pb2, events_pb2, exchange_pb2

from invoicing_common import topics
from invoicing_common.auth.principal import ROLE_PLATFORM, Principal, bind_principal, reset_principal
from invoicing_common.cdar import from_xml, to_xml
from invoicing_common.cdar.history import lifecycle_message
from invoicing_common.db import Database
from invoicing_common.ids import stage_event_id
from invoicing_common.kafka import Record, StreamApp
from invoicing_common.kafka.testing import StreamHarness
from invoicing_common.platforms import Peer, Registry
from invoicing_common.rules import load_book
from invoicing_common.schematron import artefacts_dir
from invoicing_common.settings import ServiceSettings
from invoicing_status.agents import interpret
from invoicing_status.cdar_rules import CdarRules
from invoicing_status.domain import Change, Outcome, Submitted, plan
from invoicing_status.exchange_api import ExchangeServicer
from invoicing_status.exchange_stage import ExchangeStage, register
from invoicing_status.lifecycle import Status
from invoicing_status.queries import StatusQueries
from invoicing_status.records import InvoiceFacts, Planner
from invoicing_status.repository import StatusRepository
from invoicing_status.sharing import Shared
from tests.support import Stack, scratch_database

pytestmark = pytest.mark.stack

SELLER, BUYER = "842109373", "552081317"
NOW = dt.datetime(2026, 12, 1, 10, 0, tzinfo=dt.UTC)
PEER = Peer(
    id="peer", ingest="peer:ingest", exchange="peer:exchange", token_url="https://idp/token",
    client_id="platform-local", client_secret_file="/unused", caller_client_id="platform-peer",
)  # fmt: skip


@pytest.fixture
async def store(stack: Stack) -> AsyncIterator[Database]:
    async with scratch_database(stack.database_url, "status_exchange", "invoicing_status") as db:
        yield db


@pytest.fixture(scope="module")
def rules() -> CdarRules:
    return CdarRules(load_book(), artefacts_dir(), compile_at_start=False)


def _summary(number: str = "FA-2026-0042") -> common_pb2.InvoiceSummary:
    summary = common_pb2.InvoiceSummary(
        invoice_number=number, issue_date="2026-11-20", type_code="380", currency="EUR", seller_name="Atelier",
    )  # fmt: skip
    summary.seller_ids.add(value=SELLER, scheme="0002")
    summary.buyer_ids.add(value=BUYER, scheme="0002")
    return summary


class Invoice:
    """The pipeline's events of one invoice, as status reads them."""

    def __init__(self, origin: str = "", number: str = "FA-2026-0042") -> None:
        self.id = str(uuid.uuid4())
        self.origin = origin
        self.summary = _summary(number)

    def _ref(self) -> events_pb2.InvoiceRef:
        ref = events_pb2.InvoiceRef(
            invoice_id=self.id, received_event_id=stage_event_id(self.id, "received"), origin_platform=self.origin
        )
        ref.received_at.FromDatetime(NOW)
        return ref

    def record(self, topic: str) -> Record:
        event: Any
        if topic == topics.RECEIVED:
            event = events_pb2.InvoiceReceived(event_id=stage_event_id(self.id, "received"), invoice=self._ref())
        elif topic == topics.VALIDATED:
            event = events_pb2.InvoiceValidated(
                event_id=stage_event_id(self.id, "validated"), invoice=self._ref(), valid=True, summary=self.summary
            )
        elif topic == topics.ROUTED:
            event = events_pb2.InvoiceRouted(
                event_id=stage_event_id(self.id, "routed"), invoice=self._ref(), summary=self.summary,
                outcome=events_pb2.ROUTING_OUTCOME_ROUTED, destination_platform="local" if self.origin else "peer",
                local_delivery=bool(self.origin),
            )  # fmt: skip
        else:
            event = events_pb2.InvoiceDelivered(
                event_id=stage_event_id(self.id, "delivered"), invoice=self._ref(), destination_platform="peer"
            )
        return Record(topic, 0, 0, self.id.encode(), event.SerializeToString(), [])


def _planner(submitted: Submitted, outcome: Outcome) -> Planner:
    def planner(current: Status | None, duplicate_of: str | None) -> list[Change]:
        return plan(current, submitted, outcome, duplicate_of)

    return planner


def _items(*records: Record) -> list[tuple[str, InvoiceFacts, Planner]]:
    items: list[tuple[str, InvoiceFacts, Planner]] = []
    for record in records:
        event_id, facts, submitted, outcome = interpret(record, NOW)
        items.append((event_id, facts, _planner(submitted, outcome)))
    return items


async def _history(db: Database, invoice_id: str) -> list[tuple[int, str]]:
    rows = await db.pool.fetch(
        "SELECT status_code, actor FROM status_history WHERE invoice_id = $1 ORDER BY seq", invoice_id
    )
    return [(r["status_code"], r["actor"]) for r in rows]


async def _shared(db: Database, invoice_id: str) -> tuple[str | None, str | None]:
    row = await db.pool.fetchrow(
        "SELECT origin_platform, destination_platform FROM invoices WHERE invoice_id = $1", invoice_id
    )
    return row["origin_platform"], row["destination_platform"]


@pytest.mark.parametrize("batched", [True, False])
async def test_the_acknowledgement_is_202_once_whichever_event_comes_first(store: Database, batched: bool) -> None:
    repository = StatusRepository(store)
    first, second = Invoice(), Invoice(number="FA-2026-0043")

    async def apply(*records: Record) -> None:
        if batched:
            await repository.apply_many(_items(*records))
        else:
            for item in _items(*records):
                await repository.apply(*item)

    # The first in order; the second's acknowledgement before its routing.
    await apply(first.record(topics.RECEIVED), first.record(topics.VALIDATED), first.record(topics.ROUTED))
    await apply(first.record(topics.DELIVERED), first.record(topics.DELIVERED))
    await apply(second.record(topics.RECEIVED), second.record(topics.VALIDATED), second.record(topics.DELIVERED))
    await apply(second.record(topics.ROUTED), second.record(topics.DELIVERED))
    for invoice in (first, second):
        assert await _history(store, invoice.id) == [(200, "ingest"), (201, "route"), (202, "route")]
        assert await _shared(store, invoice.id) == (None, "peer")
    outbox = await store.pool.fetchval("SELECT count(*) FROM outbox")
    assert outbox == 6


async def test_the_origin_is_recorded_and_never_erased(store: Database) -> None:
    repository = StatusRepository(store)
    invoice = Invoice(origin="local")
    for item in _items(invoice.record(topics.RECEIVED), invoice.record(topics.ROUTED)):
        await repository.apply(*item)
    assert await _shared(store, invoice.id) == ("local", None)
    assert (await _history(store, invoice.id))[-1] == (203, "route")


async def _routed_to_peer(store: Database, invoice: Invoice) -> None:
    await StatusRepository(store).apply_many(
        _items(*(invoice.record(t) for t in (topics.RECEIVED, topics.VALIDATED, topics.ROUTED, topics.DELIVERED)))
    )


def _cdar(status: int, position: int = 3, sender: str = "peer", number: str = "FA-2026-0042") -> bytes:
    change = common_pb2.StatusChange(status_code=status, actor="route" if status == 203 else "buyer:u1")
    change.at.FromDatetime(NOW)
    return to_xml(lifecycle_message("remote-id", _summary(number), change, position, sender))


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code


class Context:
    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: object = ()) -> None:
        raise Aborted(code, details)


async def _submit(servicer: ExchangeServicer, data: bytes) -> exchange_pb2.SubmitLifecycleMessageResponse:
    token = bind_principal(Principal("svc", "platform-peer", frozenset({ROLE_PLATFORM}), frozenset(), 0))
    try:
        return await servicer.SubmitLifecycleMessage(
            exchange_pb2.SubmitLifecycleMessageRequest(message=data),
            Context(),  # type: ignore[arg-type]
        )
    finally:
        reset_principal(token)


async def test_a_peer_s_message_finds_its_invoice_and_applies_once(store: Database, rules: CdarRules) -> None:
    invoice, other = Invoice(), Invoice(number="FA-2026-0099")
    await _routed_to_peer(store, invoice)
    await _routed_to_peer(store, other)
    queries = StatusQueries(store)
    [found] = await queries.shared_candidates("peer", SELLER, " FA-2026-0042")
    assert (found.invoice_id, found.status, found.shared) == (invoice.id, Status.RECEIVED, Shared("", "peer"))
    assert await queries.shared_candidates("third", SELLER, "FA-2026-0042") == []
    assert await queries.shared_candidates("peer", BUYER, "FA-2026-0042") == []

    servicer = ExchangeServicer(Registry({"peer": PEER}), rules, StatusRepository(store), queries)
    applied = await _submit(servicer, _cdar(203))
    again = await _submit(servicer, _cdar(203))
    assert (applied.invoice_id, applied.status_code, applied.applied) == (invoice.id, 203, True)
    assert (again.status_code, again.applied) == (203, False)
    assert (await _submit(servicer, _cdar(205, position=4))).applied
    with pytest.raises(Aborted) as refused:
        await _submit(servicer, _cdar(203, position=9, number="FA-0000"))
    assert refused.value.code is grpc.StatusCode.NOT_FOUND
    assert await _history(store, invoice.id) == [
        (200, "ingest"), (201, "route"), (202, "route"), (203, "platform:peer"), (205, "platform:peer"),
    ]  # fmt: skip
    event = events_pb2.StatusEvent.FromString(
        await store.pool.fetchval("SELECT payload FROM outbox ORDER BY seq DESC LIMIT 1")
    )
    assert (event.invoice_id, event.status_code, event.actor) == (invoice.id, 205, "platform:peer")
    # Each message applied is kept once, as it came.
    kept = await store.pool.fetch(
        "SELECT platform, message_id, status_code, body FROM received_lifecycle_messages WHERE invoice_id = $1"
        " ORDER BY received_at",
        invoice.id,
    )
    assert [(r["platform"], r["status_code"]) for r in kept] == [("peer", 203), ("peer", 205)]
    assert [bytes(r["body"]) for r in kept] == [_cdar(203), _cdar(205, position=4)]
    assert kept[0]["message_id"] == from_xml(_cdar(203)).message_id


def _constant(changes: list[Change]) -> Planner:
    def planner(_current: Status | None, _duplicate_of: str | None) -> list[Change]:
        return changes

    return planner


class _Client:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def submit(self, peer: Peer, invoice_id: str, data: bytes) -> exchange_pb2.SubmitLifecycleMessageResponse:
        self.sent.append(data)
        return exchange_pb2.SubmitLifecycleMessageResponse(invoice_id="remote", status_code=212, applied=True)


async def test_the_stage_sends_the_history_row_the_event_names(store: Database, rules: CdarRules) -> None:
    invoice = Invoice()
    await _routed_to_peer(store, invoice)
    repository = StatusRepository(store)
    for status in (Status.MADE_AVAILABLE, Status.PAYMENT_SENT):
        source = f"cdar:peer:{status.value}"
        change = Change(status, "platform:peer", NOW, source)
        await repository.apply(source, InvoiceFacts(invoice_id=invoice.id), _constant([change]))
    payment = {"amount": "1250.00", "currency": "EUR", "paid_on": "2026-11-30"}
    await store.pool.execute(
        "INSERT INTO status_history (invoice_id, status_code, previous_code, actor, occurred_at, source_event_id,"
        " payment) VALUES ($1, 212, 211, 'supplier:u2', $2, 'update:x', $3::jsonb)",
        invoice.id,
        NOW,
        json.dumps(payment),
    )
    client = _Client()

    async def pause(_seconds: float) -> None:
        raise AssertionError("no retry expected")

    app = StreamApp("invoicing-status-exchange", ServiceSettings())
    stage = ExchangeStage(StatusQueries(store), Registry({"peer": PEER}), rules, client, "local", pause)
    register(app, stage)
    stream = StreamHarness(app)
    rows = await store.pool.fetch("SELECT seq, status_code FROM status_history WHERE invoice_id = $1", invoice.id)
    for row in rows:
        event = events_pb2.StatusEvent(invoice_id=invoice.id, status_code=row["status_code"], sequence=row["seq"])
        await stream.put(topics.STATUS, event.SerializeToString())
    # 200-202 are A's own; 203 and 211 came from the peer; 212 goes.
    [data] = client.sent
    message = from_xml(data)
    assert (message.status_code, str(message.amount), message.currency) == (212, "1250.00", "EUR")
    assert message.sender.global_id == "local" and message.invoice.number == "FA-2026-0042"
    position = len(rows) - 1
    assert message.message_id == lifecycle_message(invoice.id, _summary(), _change_212(), position, "local").message_id
    assert stream.dead_letters() == []


def _change_212() -> common_pb2.StatusChange:
    change = common_pb2.StatusChange(status_code=212, actor="supplier:u2")
    change.at.FromDatetime(NOW)
    return change
