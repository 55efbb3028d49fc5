"""Two platforms exchanging CDAR in memory: each one's exchange stage (run
by the stream harness on its status events) calls the other's
ExchangeService servicer, with the official rules checking every message
both ways. The status store is an in-memory stand-in with the store's
contract (apply once per event id, the planner decides; the history's
rows and positions); the SQL itself is the integration tests' business."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest
from invoicing.v1 import common_pb2, events_pb2, exchange_pb2

from invoicing_common import topics
from invoicing_common.auth.principal import ROLE_PLATFORM, ROLE_SUPPLIER, Principal, bind_principal, reset_principal
from invoicing_common.cdar import from_xml, to_xml
from invoicing_common.cdar.history import lifecycle_message
from invoicing_common.kafka import StreamApp, backoff_delays
from invoicing_common.kafka.testing import StreamHarness
from invoicing_common.platforms import Peer, Registry
from invoicing_common.rules import load_book
from invoicing_common.schematron import artefacts_dir
from invoicing_common.settings import ServiceSettings
from invoicing_status.cdar_rules import CdarRules
from invoicing_status.domain import Change, Payment
from invoicing_status.exchange_api import EXCHANGE_POLICY, ExchangeServicer
from invoicing_status.exchange_stage import (
    FIRST_DELAY_SECONDS,
    MAX_DELAY_SECONDS,
    NOT_FOUND_GRACE_SECONDS,
    ExchangeStage,
    register,
)
from invoicing_status.lifecycle import Reason, Status
from invoicing_status.queries import SharedStatus
from invoicing_status.records import InvoiceFacts, Planner, ReceivedMessage, payment_proto, status_event
from invoicing_status.sharing import Candidate, Shared

SELLER, BUYER = "842109373", "552081317"
T0 = dt.datetime(2026, 11, 20, 9, 0, tzinfo=dt.UTC)


def _summary(seller: str = SELLER) -> common_pb2.InvoiceSummary:
    summary = common_pb2.InvoiceSummary(
        invoice_number="FA-2026-0042", issue_date="2026-11-20", type_code="380", currency="EUR",
        seller_name="Atelier Lumière SAS", buyer_name="Client SA",
    )  # fmt: skip
    if seller:
        summary.seller_ids.add(value=seller, scheme="0002")
    summary.buyer_ids.add(value=BUYER, scheme="0002")
    return summary


@dataclass
class _Invoice:
    status: Status
    summary: common_pb2.InvoiceSummary
    shared: Shared


class MemoryStore:
    """The parts of StatusRepository and StatusQueries the exchange uses."""

    def __init__(self) -> None:
        self.invoices: dict[str, _Invoice] = {}
        self.history: list[tuple[str, Change]] = []  # position (seq) = index + 1
        self.processed: set[str] = set()
        self.received: list[ReceivedMessage] = []
        self.published = 0  # history rows already handed to the status topic

    def add(
        self, invoice_id: str, shared: Shared, *statuses: Status, summary: common_pb2.InvoiceSummary | None = None
    ) -> None:
        self.invoices[invoice_id] = _Invoice(statuses[-1], summary or _summary(), shared)
        for status in statuses:
            actor = "ingest" if status is Status.SUBMITTED else "route"
            self.history.append((invoice_id, Change(status, actor, T0, f"{invoice_id}:{status.value}")))

    def set(self, invoice_id: str, change: Change) -> None:
        """A change made on this platform (UpdateStatus, the pipeline)."""
        self.invoices[invoice_id].status = change.status
        self.history.append((invoice_id, change))

    def events(self) -> list[bytes]:
        """The status events written since the last call (the outbox relay)."""
        out = []
        for seq in range(self.published + 1, len(self.history) + 1):
            invoice_id, change = self.history[seq - 1]
            event = status_event(seq, invoice_id, change, None, self.invoices[invoice_id].summary, "")
            out.append(event.SerializeToString())
        self.published = len(self.history)
        return out

    def statuses(self, invoice_id: str) -> list[tuple[int, str]]:
        return [(c.status.value, c.actor) for i, c in self.history if i == invoice_id]

    async def apply(
        self, event_id: str, facts: InvoiceFacts, planner: Planner, received: ReceivedMessage | None = None
    ) -> list[Change]:
        if event_id in self.processed:
            return []
        invoice = self.invoices.get(facts.invoice_id)
        changes = planner(invoice.status if invoice else None, None)
        self.processed.add(event_id)
        for change in changes:
            self.set(facts.invoice_id, change)
        if changes and received is not None:
            self.received.append(received)
        return changes

    async def shared_candidates(self, peer_id: str, seller_siren: str, number: str) -> list[Candidate]:
        return [
            Candidate(invoice_id, i.status, frozenset({SELLER}), i.summary, i.shared)
            for invoice_id, i in self.invoices.items()
            if i.shared.with_peer(peer_id)
        ]

    async def shared_status(self, position: int) -> SharedStatus | None:
        if not 0 < position <= len(self.history):
            return None
        invoice_id, change = self.history[position - 1]
        rank = sum(1 for i, _ in self.history[: position - 1] if i == invoice_id)
        row = common_pb2.StatusChange(status_code=change.status.value, actor=change.actor)
        row.at.FromDatetime(change.occurred_at)
        if change.reason is not None:
            row.reason.code, row.reason.text = change.reason.code, change.reason.text
        if change.payment is not None:
            payment_proto(change.payment, row.payment)
        invoice = self.invoices[invoice_id]
        return SharedStatus(invoice_id, invoice.shared, invoice.summary, row, rank)

    async def current(self, invoice_id: str) -> tuple[Status, int]:
        return self.invoices[invoice_id].status, len(self.history)


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code, self.details = code, details


class Context:
    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: object = ()) -> None:
        raise Aborted(code, details)


async def call(
    servicer: ExchangeServicer, client_id: str, data: bytes, *roles: str
) -> exchange_pb2.SubmitLifecycleMessageResponse:
    """The servicer's answer to ``client_id``'s account (role platform unless told)."""
    principal = Principal("service-account", client_id, frozenset(roles or {ROLE_PLATFORM}), frozenset(), 0)
    token = bind_principal(principal)
    try:
        request = exchange_pb2.SubmitLifecycleMessageRequest(message=data)
        return await servicer.SubmitLifecycleMessage(request, Context())  # type: ignore[arg-type]
    finally:
        reset_principal(token)


@dataclass
class Wire:
    """The network between the platforms: what went over it, and outages."""

    platforms: dict[str, Platform] = field(default_factory=dict)
    sent: list[tuple[str, int]] = field(default_factory=list)  # (to, status code)
    down: int = 0  # the next calls that fail UNAVAILABLE
    unknown: int = 0  # the next calls the receiver answers NOT_FOUND (it lags)


class Client:
    """The exchange client of one platform, calling the other in memory."""

    def __init__(self, wire: Wire) -> None:
        self._wire = wire

    async def submit(self, peer: Peer, invoice_id: str, data: bytes) -> exchange_pb2.SubmitLifecycleMessageResponse:
        if self._wire.down:
            self._wire.down -= 1
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, details="connection refused")
        if self._wire.unknown:
            self._wire.unknown -= 1
            raise grpc.aio.AioRpcError(grpc.StatusCode.NOT_FOUND, details="no such invoice shared with you")
        target = self._wire.platforms[peer.exchange]
        self._wire.sent.append((target.id, from_xml(data).status_code))
        try:
            return await call(target.servicer, peer.client_id, data)
        except Aborted as refused:
            raise grpc.aio.AioRpcError(refused.code, details=refused.details) from None


class Platform:
    def __init__(self, platform_id: str, other: str, wire: Wire, rules: CdarRules) -> None:
        self.id = platform_id
        peer = Peer(
            id=other, ingest=f"{other}:ingest", exchange=other, token_url="https://idp/token",
            client_id=f"platform-{platform_id}", client_secret_file="/unused", caller_client_id=f"platform-{other}",
        )  # fmt: skip
        self.registry = Registry({other: peer})
        self.store = MemoryStore()
        self.servicer = ExchangeServicer(self.registry, rules, self.store, self.store)  # type: ignore[arg-type]
        self.pauses: list[float] = []

        async def pause(seconds: float) -> None:
            self.pauses.append(seconds)

        app = StreamApp(f"{platform_id}.invoicing-status-exchange", ServiceSettings())
        stage = ExchangeStage(self.store, self.registry, rules, Client(wire), platform_id, pause)  # type: ignore[arg-type]
        register(app, stage)
        self.stream = StreamHarness(app)
        wire.platforms[platform_id] = self

    async def publish(self) -> None:
        """The status topic: this platform's new status events, through its exchange stage."""
        for value in self.store.events():
            await self.stream.put(topics.STATUS, value, key=b"k")


@pytest.fixture(scope="module")
def rules() -> CdarRules:
    return CdarRules(load_book(), artefacts_dir(), compile_at_start=False)


@dataclass
class Pair:
    wire: Wire
    a: Platform  # the seller's platform: PLATFORM_ID local
    b: Platform  # the buyer's: PLATFORM_ID peer


A_ID, B_ID = "5c004160-aa7e-471d-bb39-4f708d608902", "0b6f3f7e-5d0c-4e57-9a55-2a37f0c3d3a1"


@pytest.fixture
async def pair(rules: CdarRules) -> AsyncIterator[Pair]:
    wire = Wire()
    pair = Pair(wire, Platform("local", "peer", wire, rules), Platform("peer", "local", wire, rules))
    # A issued the invoice to B, B has it.
    pair.a.store.add(A_ID, Shared(destination_platform="peer"), Status.SUBMITTED, Status.ISSUED, Status.RECEIVED)
    pair.b.store.add(B_ID, Shared(origin_platform="local"), Status.SUBMITTED)
    await pair.a.publish()
    await pair.b.publish()
    assert wire.sent == []
    yield pair


def _change(status: Status, actor: str, reason: Reason | None = None, payment: Payment | None = None) -> Change:
    return Change(status, actor, T0 + dt.timedelta(days=1), f"request-{status.value}", reason, payment)


PAID = Payment("1250.00", "EUR", dt.date(2026, 11, 30))


async def test_a_lifecycle_travels_both_ways_one_valid_message_per_status(pair: Pair) -> None:
    a, b = pair.a, pair.b
    b.store.set(B_ID, _change(Status.MADE_AVAILABLE, "route"))
    b.store.set(B_ID, _change(Status.IN_HAND, "buyer:u1"))
    b.store.set(B_ID, _change(Status.DISPUTED, "buyer:u1", Reason("TX_TVA_ERR", "taux")))
    b.store.set(B_ID, _change(Status.APPROVED, "buyer:u1"))
    b.store.set(B_ID, _change(Status.PAYMENT_SENT, "buyer:u1", payment=PAID))
    await b.publish()
    assert a.store.invoices[A_ID].status is Status.PAYMENT_SENT
    a.store.set(A_ID, _change(Status.CASHED, "supplier:u2", payment=PAID))
    await a.publish()
    # What A applied from B's messages goes nowhere; B's own 212 neither.
    await b.publish()
    assert b.store.invoices[B_ID].status is Status.CASHED

    assert pair.wire.sent == [("local", s) for s in (203, 204, 207, 205, 211)] + [("peer", 212)]
    assert a.store.statuses(A_ID) == [
        (200, "ingest"), (201, "route"), (202, "route"),
        *((s, "platform:peer") for s in (203, 204, 207, 205, 211)),
        (212, "supplier:u2"),
    ]  # fmt: skip
    assert b.store.statuses(B_ID)[-1] == (212, "platform:local")
    # The reason and the payments travelled with their statuses. A CDAR
    # has no payment date: the status's own date stands for it.
    assert a.store.history[5][1].reason == Reason("TX_TVA_ERR", "taux")
    on_status_day = Payment(PAID.amount, PAID.currency, (T0 + dt.timedelta(days=1)).date())
    assert a.store.history[7][1].payment == b.store.history[-1][1].payment == on_status_day
    assert a.pauses == b.pauses == []
    assert pair.b.stream.dead_letters() == pair.a.stream.dead_letters() == []


async def test_a_status_sent_again_is_applied_once(pair: Pair) -> None:
    pair.b.store.set(B_ID, _change(Status.MADE_AVAILABLE, "route"))
    [event] = pair.b.store.events()
    await pair.b.stream.put(topics.STATUS, event)
    await pair.b.stream.put(topics.STATUS, event)  # redelivered
    assert pair.wire.sent == [("local", 203), ("local", 203)]
    assert [s for s, _ in pair.a.store.statuses(A_ID)] == [200, 201, 202, 203]
    # The message is kept once, as it came, with the platform that sent it.
    [kept] = pair.a.store.received
    assert (kept.platform, kept.status_code, from_xml(kept.body).message_id) == ("peer", 203, kept.message_id)


async def test_the_destination_s_first_status_may_come_before_route_s_acknowledgement(rules: CdarRules) -> None:
    wire = Wire()
    a, b = Platform("local", "peer", wire, rules), Platform("peer", "local", wire, rules)
    a.store.add(A_ID, Shared(destination_platform="peer"), Status.SUBMITTED, Status.ISSUED)
    b.store.add(B_ID, Shared(origin_platform="local"), Status.SUBMITTED, Status.MADE_AVAILABLE)
    a.store.published = len(a.store.history)
    await b.publish()
    assert a.store.statuses(A_ID)[-2:] == [(202, "platform:peer"), (203, "platform:peer")]


async def test_a_platform_away_is_waited_for_with_growing_pauses(pair: Pair) -> None:
    pair.wire.down = 4
    pair.b.store.set(B_ID, _change(Status.MADE_AVAILABLE, "route"))
    await pair.b.publish()
    assert pair.b.pauses == [0.5, 1.0, 2.0, 4.0]
    assert pair.a.store.invoices[A_ID].status is Status.MADE_AVAILABLE
    waits = backoff_delays(FIRST_DELAY_SECONDS, MAX_DELAY_SECONDS)
    assert [next(waits) for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]


async def test_an_invoice_the_receiver_does_not_know_yet_is_tried_again(pair: Pair) -> None:
    # A's status service has not recorded the shared invoice yet.
    pair.wire.unknown = 3
    pair.b.store.set(B_ID, _change(Status.MADE_AVAILABLE, "route"))
    await pair.b.publish()
    assert pair.b.pauses == [0.5, 1.0, 2.0]
    assert pair.a.store.invoices[A_ID].status is Status.MADE_AVAILABLE


async def test_an_invoice_still_unknown_after_the_grace_is_skipped(
    pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    pair.wire.unknown = 1000
    pair.b.store.set(B_ID, _change(Status.MADE_AVAILABLE, "route"))
    with caplog.at_level(logging.ERROR):
        await pair.b.publish()
    # 0.5 + 1 + ... + 16 + 30 * 9 = 301.5 s of waits: then it is given up.
    assert sum(pair.b.pauses) >= NOT_FOUND_GRACE_SECONDS and len(pair.b.pauses) == 15
    [refusal] = [r for r in caplog.records if "refused" in r.getMessage()]
    assert "NOT_FOUND" in refusal.getMessage()
    assert pair.a.store.invoices[A_ID].status is Status.RECEIVED


async def test_a_refusal_for_good_is_logged_and_skipped(pair: Pair, caplog: pytest.LogCaptureFixture) -> None:
    # A does not know 204 before 203: FAILED_PRECONDITION, never better.
    pair.b.store.set(B_ID, _change(Status.MADE_AVAILABLE, "buyer:x"))
    pair.b.store.published = len(pair.b.store.history)
    pair.b.store.set(B_ID, _change(Status.IN_HAND, "buyer:u1"))
    with caplog.at_level(logging.ERROR):
        await pair.b.publish()
    assert pair.wire.sent == [("local", 204)]
    assert pair.b.pauses == [] and pair.b.stream.dead_letters() == []
    [refusal] = [r for r in caplog.records if "refused" in r.getMessage()]
    assert "FAILED_PRECONDITION" in refusal.getMessage() and refusal.invoice_id == B_ID  # type: ignore[attr-defined]
    assert pair.a.store.invoices[A_ID].status is Status.RECEIVED


async def test_a_message_the_rules_refuse_is_never_sent(pair: Pair, caplog: pytest.LogCaptureFixture) -> None:
    # A reason the official rules do not allow with 207 (the API refuses it;
    # a row recorded before that check existed would carry it).
    pair.b.store.set(B_ID, _change(Status.MADE_AVAILABLE, "route"))
    pair.b.store.set(B_ID, _change(Status.DISPUTED, "buyer:u1", Reason("REJ_UNI", "x")))
    with caplog.at_level(logging.ERROR):
        await pair.b.publish()
    assert pair.wire.sent == [("local", 203)]
    assert any("BR-FR-CDV" in r.getMessage() and "not sent" in r.getMessage() for r in caplog.records)
    assert pair.b.stream.dead_letters() == []


async def test_an_invoice_that_cannot_be_expressed_is_not_sent(rules: CdarRules) -> None:
    wire = Wire()
    a, b = Platform("local", "peer", wire, rules), Platform("peer", "local", wire, rules)
    b.store.add(B_ID, Shared(origin_platform="local"), Status.SUBMITTED, Status.MADE_AVAILABLE, summary=_summary(""))
    await b.publish()
    assert wire.sent == [] and b.stream.dead_letters() == [] and a.store.history == []


async def test_a_platform_missing_from_the_registry_dead_letters_the_status(pair: Pair) -> None:
    pair.b.store.invoices[B_ID].shared = Shared(origin_platform="gone")
    pair.b.store.set(B_ID, _change(Status.MADE_AVAILABLE, "route"))
    await pair.b.publish()
    [letter] = pair.b.stream.dead_letters()
    assert "gone" in letter.error and pair.wire.sent == []


# -- the ExchangeService's answers ---------------------------------------------------


def _cdar(status: int, sender: str = "peer", reason: tuple[str, str] | None = None, amount: str = "") -> bytes:
    change = common_pb2.StatusChange(status_code=status, actor="buyer:u1" if status != 212 else "supplier:u2")
    change.at.FromDatetime(T0 + dt.timedelta(days=1))
    if reason:
        change.reason.code, change.reason.text = reason
    if amount:
        change.payment.amount = amount
    return to_xml(lifecycle_message(B_ID, _summary(), change, 3, sender))


async def _refusal(pair: Pair, data: bytes, client_id: str = "platform-peer", *roles: str) -> Aborted:
    with pytest.raises(Aborted) as refused:
        await call(pair.a.servicer, client_id, data, *roles)
    return refused.value


async def test_only_a_registered_platform_may_send() -> None:
    [(method, roles)] = EXCHANGE_POLICY.items()
    assert (method, roles) == ("/invoicing.v1.ExchangeService/SubmitLifecycleMessage", frozenset({ROLE_PLATFORM}))


async def test_the_service_answers_each_refusal_with_its_code(pair: Pair) -> None:
    refused = await _refusal(pair, _cdar(203), "platform-third")
    assert refused.code is grpc.StatusCode.PERMISSION_DENIED and "not a platform registered" in refused.details
    refused = await _refusal(pair, _cdar(203), "platform-peer", ROLE_SUPPLIER)
    assert refused.code is grpc.StatusCode.PERMISSION_DENIED
    refused = await _refusal(pair, b"<notxml")
    assert refused.code is grpc.StatusCode.INVALID_ARGUMENT
    assert refused.details == "message: document: is not well-formed XML"
    refused = await _refusal(pair, _cdar(203, sender="third"))
    assert refused.code is grpc.StatusCode.INVALID_ARGUMENT and "SenderTradeParty" in refused.details
    refused = await _refusal(pair, _cdar(207))  # no reason: BR-FR-CDV-15
    assert refused.code is grpc.StatusCode.INVALID_ARGUMENT and "BR-FR-CDV-15" in refused.details
    refused = await _refusal(pair, _cdar(212, amount="10.00"))  # A's own side
    assert refused.code is grpc.StatusCode.PERMISSION_DENIED and "not platform peer's" in refused.details
    refused = await _refusal(pair, _cdar(205))  # 202 -> 205
    assert refused.code is grpc.StatusCode.FAILED_PRECONDITION and "202 RECEIVED" in refused.details
    pair.a.store.invoices[A_ID].shared = Shared(destination_platform="third")
    refused = await _refusal(pair, _cdar(203))
    assert refused.code is grpc.StatusCode.NOT_FOUND and A_ID not in refused.details
    assert pair.a.store.statuses(A_ID)[-1] == (202, "route")


async def test_the_service_applies_a_message_once(pair: Pair) -> None:
    first = await call(pair.a.servicer, "platform-peer", _cdar(203))
    again = await call(pair.a.servicer, "platform-peer", _cdar(203))
    assert (first.invoice_id, first.status_code, first.applied) == (A_ID, 203, True)
    assert (again.invoice_id, again.status_code, again.applied) == (A_ID, 203, False)


def test_the_status_events_carry_what_the_stage_needs() -> None:
    # The stage reads the history row by the event's sequence: it must be set.
    event = events_pb2.StatusEvent.FromString(
        status_event(
            7, A_ID, _change(Status.CASHED, "supplier:u2", payment=PAID), Status.PAYMENT_SENT, None, ""
        ).SerializeToString()
    )
    assert (event.sequence, event.invoice_id, event.status_code, event.actor) == (7, A_ID, 212, "supplier:u2")
