"""The pure rules of the exchange with other platforms
(invoicing_status.sharing): which statuses go to which peer, who may call,
which invoice a message names, and what a peer's status does to an invoice."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from invoicing.v1 import common_pb2

from invoicing_common.auth.principal import ROLE_BUYER, ROLE_PLATFORM, Principal
from invoicing_common.cdar import InvoiceRef, LifecycleMessage, Party
from invoicing_common.cdar import Reason as CdarReason
from invoicing_common.platforms import Peer, Registry
from invoicing_status.domain import Payment, TransitionError
from invoicing_status.lifecycle import BUYER_STATUSES, SUPPLIER_STATUSES, Reason, Status
from invoicing_status.sharing import (
    EXCHANGED,
    RECEIVING_SIDE,
    SENDING_SIDE,
    BadMessage,
    Candidate,
    InvoiceKey,
    NotAPeer,
    NotTheirs,
    PeerStatus,
    Shared,
    calling_peer,
    check_envelope,
    match,
    peer_status,
    plan_peer_update,
)

AT = dt.datetime(2026, 12, 1, 10, 0, tzinfo=dt.UTC)
SELLER = "842109373"
# On platform A, an invoice delivered to B; on B, the same one, from A.
ON_A = Shared(destination_platform="peer")
ON_B = Shared(origin_platform="local")


def _peer(peer_id: str, caller: str) -> Peer:
    return Peer(
        id=peer_id, ingest="h:1", exchange="h:2", token_url="https://t", client_id="me",
        client_secret_file="/nowhere", caller_client_id=caller,
    )  # fmt: skip


REGISTRY = Registry({"peer": _peer("peer", "platform-peer"), "third": _peer("third", "platform-third")})


def _principal(client_id: str, *roles: str) -> Principal:
    return Principal("sub", client_id, frozenset(roles), frozenset(), 0.0)


# -- which statuses go where -------------------------------------------------


def test_each_side_tells_the_other_what_its_own_parties_and_pipeline_set() -> None:
    assert SENDING_SIDE == SUPPLIER_STATUSES
    receiving = BUYER_STATUSES | {Status.MADE_AVAILABLE, Status.REJECTED}
    assert receiving == RECEIVING_SIDE
    assert not SENDING_SIDE & RECEIVING_SIDE
    # 200-202 and 501 stay on the platform that sets them.
    assert not EXCHANGED & {Status.SUBMITTED, Status.ISSUED, Status.RECEIVED, Status.INADMISSIBLE}


@pytest.mark.parametrize("status", sorted(RECEIVING_SIDE))
def test_the_receiving_platform_sends_its_statuses_to_the_origin(status: Status) -> None:
    assert ON_B.recipient(status, "buyer:u1") == "local"
    assert ON_B.recipient(status, "route") == "local"
    # The sending platform never sends them back.
    assert ON_A.recipient(status, "platform:peer") is None


@pytest.mark.parametrize("status", sorted(SENDING_SIDE))
def test_the_sending_platform_sends_its_statuses_to_the_destination(status: Status) -> None:
    assert ON_A.recipient(status, "supplier:u2") == "peer"
    assert ON_B.recipient(status, "platform:local") is None


def test_a_status_applied_from_a_peer_is_not_sent_back_to_it() -> None:
    assert ON_B.recipient(Status.CASHED, "platform:local") is None
    assert ON_A.recipient(Status.APPROVED, "platform:peer") is None
    # From another platform than the one it is shared with, it would go.
    assert ON_B.recipient(Status.APPROVED, "platform:third") == "local"


def test_nothing_is_sent_of_an_unshared_invoice_or_of_the_other_side_s_statuses() -> None:
    assert Shared().recipient(Status.APPROVED, "buyer:u1") is None
    assert ON_A.recipient(Status.APPROVED, "buyer:u1") is None
    assert ON_B.recipient(Status.CASHED, "supplier:u2") is None
    assert ON_A.recipient(Status.RECEIVED, "route") is None


def test_a_peer_may_set_the_statuses_of_its_side_only() -> None:
    assert ON_A.settable_by("peer") == RECEIVING_SIDE
    assert ON_B.settable_by("local") == SENDING_SIDE
    assert ON_A.settable_by("third") == ON_B.settable_by("peer") == frozenset()
    assert Shared().settable_by("") == frozenset()


# -- who may call --------------------------------------------------------------


def test_the_caller_must_be_a_registered_platform_with_the_platform_role() -> None:
    assert calling_peer(_principal("platform-peer", ROLE_PLATFORM), REGISTRY).id == "peer"
    with pytest.raises(NotAPeer, match="role platform"):
        calling_peer(_principal("platform-peer", ROLE_BUYER), REGISTRY)
    with pytest.raises(NotAPeer, match="not a platform registered"):
        calling_peer(_principal("platform-unknown", ROLE_PLATFORM), REGISTRY)
    with pytest.raises(NotAPeer):
        calling_peer(_principal("", ROLE_PLATFORM), REGISTRY)
    with pytest.raises(NotAPeer):
        calling_peer(_principal("platform-peer", ROLE_PLATFORM), Registry({}))


def test_the_message_must_come_from_the_calling_platform() -> None:
    peer = REGISTRY.peers["peer"]
    check_envelope(peer, "peer", "CDV-1")
    with pytest.raises(BadMessage) as refused:
        check_envelope(peer, "third", "CDV-1")
    assert refused.value.field == "ExchangedDocument/SenderTradeParty/GlobalID"
    with pytest.raises(BadMessage) as refused:
        check_envelope(peer, "peer", "x" * 201)
    assert refused.value.field == "ExchangedDocument/ID"


# -- which invoice -------------------------------------------------------------


def _candidate(
    invoice_id: str, shared: Shared = ON_A, status: Status = Status.ISSUED, number: str = "FA-1",
    issued: str = "2026-11-20", type_code: str = "380", sirens: frozenset[str] = frozenset({SELLER}),
) -> Candidate:  # fmt: skip
    summary = common_pb2.InvoiceSummary(invoice_number=number, issue_date=issued, type_code=type_code)
    return Candidate(invoice_id, status, sirens, summary, shared)


KEY = InvoiceKey(SELLER, "FA-1", dt.date(2026, 11, 20), "380")


def test_the_message_names_one_invoice_by_seller_number_and_date() -> None:
    found = match([_candidate("a")], KEY, "peer")
    assert found is not None and found.invoice_id == "a"
    assert match([_candidate(" a", number=" FA-1 ")], KEY, "peer") is not None
    assert match([_candidate("a", type_code="")], InvoiceKey(SELLER, "FA-1", dt.date(2026, 11, 20)), "peer")


@pytest.mark.parametrize(
    "other",
    [
        _candidate("a", issued="2026-11-21"),
        _candidate("a", number="FA-2"),
        _candidate("a", type_code="381"),
        _candidate("a", sirens=frozenset({"552081317"})),
        # Shared with another platform, or with none: not the caller's.
        _candidate("a", shared=Shared(destination_platform="third")),
        _candidate("a", shared=Shared()),
    ],
)
def test_an_invoice_that_differs_or_is_not_shared_with_the_caller_is_not_found(other: Candidate) -> None:
    assert match([other], KEY, "peer") is None


def test_two_invoices_for_one_message_are_none_unless_one_was_refused_and_sent_again() -> None:
    assert match([_candidate("a"), _candidate("b")], KEY, "peer") is None
    found = match([_candidate("a", status=Status.REJECTED), _candidate("b")], KEY, "peer")
    assert found is not None and found.invoice_id == "b"
    both_refused = [_candidate("a", status=Status.REJECTED), _candidate("b", status=Status.REJECTED)]
    assert match(both_refused, KEY, "peer") is None


# -- what a peer's status does -------------------------------------------------


def _plan(current: Status, shared: Shared, peer: str, code: int, **asked: object) -> list[tuple[Status, str]]:
    changes = plan_peer_update(current, shared, peer, PeerStatus(code, **asked), "EUR", AT, "cdar:x")  # type: ignore[arg-type]
    assert all(c.source_event_id == "cdar:x" and c.occurred_at == AT for c in changes)
    return [(c.status, c.actor) for c in changes]


def test_the_destination_s_statuses_follow_the_lifecycle_with_the_platform_as_actor() -> None:
    assert _plan(Status.RECEIVED, ON_A, "peer", 203) == [(Status.MADE_AVAILABLE, "platform:peer")]
    assert _plan(Status.MADE_AVAILABLE, ON_A, "peer", 205) == [(Status.APPROVED, "platform:peer")]
    assert _plan(Status.ISSUED, ON_A, "peer", 213, reason=Reason("REJ_SEMAN", "")) == [
        (Status.REJECTED, "platform:peer")
    ]


def test_the_destination_s_message_before_route_s_acknowledgement_records_202_first() -> None:
    assert _plan(Status.ISSUED, ON_A, "peer", 203) == [
        (Status.RECEIVED, "platform:peer"),
        (Status.MADE_AVAILABLE, "platform:peer"),
    ]
    # Only what 202 allows: 204 cannot follow 201 nor 202.
    with pytest.raises(TransitionError) as refused:
        _plan(Status.ISSUED, ON_A, "peer", 204)
    assert refused.value.precondition and "201 ISSUED" in refused.value.message


def test_the_origin_s_statuses_follow_the_lifecycle() -> None:
    assert _plan(Status.PAYMENT_SENT, ON_B, "local", 212, amount="1250.00", status_on=dt.date(2026, 11, 30)) == [
        (Status.CASHED, "platform:local")
    ]
    assert _plan(Status.MADE_AVAILABLE, ON_B, "local", 220) == [(Status.CANCELLED, "platform:local")]


@pytest.mark.parametrize(
    ("current", "shared", "peer", "code"),
    [
        # A platform's own side is not the peer's to set.
        (Status.MADE_AVAILABLE, ON_A, "peer", 212),
        (Status.MADE_AVAILABLE, ON_B, "local", 205),
        # Nor any status on an invoice not shared with it.
        (Status.MADE_AVAILABLE, ON_A, "third", 205),
        # 202 is set by route's delivery stage, 501 by validate: never a peer.
        (Status.ISSUED, ON_A, "peer", 202),
        (Status.SUBMITTED, ON_B, "local", 501),
    ],
)
def test_a_status_of_the_other_side_is_not_the_peer_s(current: Status, shared: Shared, peer: str, code: int) -> None:
    with pytest.raises(NotTheirs):
        _plan(current, shared, peer, code)


def test_a_step_the_lifecycle_refuses_is_a_failed_precondition() -> None:
    with pytest.raises(TransitionError) as refused:
        _plan(Status.APPROVED, ON_A, "peer", 204)
    assert refused.value.precondition
    with pytest.raises(TransitionError) as refused:
        _plan(Status.CASHED, ON_B, "local", 220)
    assert refused.value.precondition and "final" in refused.value.message


def test_an_unknown_status_is_an_invalid_argument() -> None:
    with pytest.raises(TransitionError) as refused:
        _plan(Status.MADE_AVAILABLE, ON_A, "peer", 250)
    assert not refused.value.precondition and refused.value.field == "status_code"


def test_reasons_follow_the_official_rules_the_code_alone_suffices() -> None:
    changes = plan_peer_update(
        Status.MADE_AVAILABLE, ON_A, "peer", PeerStatus(207, Reason("TX_TVA_ERR", "")), "EUR", AT, "cdar:x"
    )
    assert changes[-1].reason == Reason("TX_TVA_ERR", "")
    with pytest.raises(TransitionError) as refused:
        _plan(Status.MADE_AVAILABLE, ON_A, "peer", 207)
    assert refused.value.field == "reason" and not refused.value.precondition
    with pytest.raises(TransitionError) as refused:
        _plan(Status.MADE_AVAILABLE, ON_A, "peer", 207, reason=Reason("REJ_UNI", "x"))
    assert refused.value.field == "reason.code"


def test_the_payment_of_211_and_212_comes_from_the_amount_cashed() -> None:
    [change] = plan_peer_update(
        Status.PAYMENT_SENT, ON_B, "local", PeerStatus(212, None, "1250.00", "", dt.date(2026, 11, 30)), "EUR", AT, "c"
    )
    assert change.payment == Payment("1250.00", "EUR", dt.date(2026, 11, 30))
    # 212 without it: the official rules refuse such a message, and so does the lifecycle.
    with pytest.raises(TransitionError) as refused:
        _plan(Status.PAYMENT_SENT, ON_B, "local", 212)
    assert refused.value.field == "payment"
    # 211: the rules do not ask for it; given, it is kept.
    [change] = plan_peer_update(Status.APPROVED, ON_A, "peer", PeerStatus(211), "EUR", AT, "c")
    assert change.status is Status.PAYMENT_SENT and change.payment is None
    [change] = plan_peer_update(Status.APPROVED, ON_A, "peer", PeerStatus(211, None, "10.00", "USD"), "EUR", AT, "c")
    assert change.payment == Payment("10.00", "USD", AT.date())


def _message(amount: Decimal | None = None, reasons: tuple[CdarReason, ...] = ()) -> LifecycleMessage:
    platform = Party(role="WK", global_id="peer", scheme="0238")
    return LifecycleMessage(
        message_id="CDV-1", issued_at=AT, status_code=212,
        invoice=InvoiceRef(number="FA-1", issue_date=dt.date(2026, 11, 20), seller_siren=SELLER, type_code="380"),
        sender=platform, issuer=platform, recipients=(Party(role="SE", global_id=SELLER, scheme="0002"),),
        reasons=reasons, amount=amount, currency="EUR" if amount is not None else None,
        status_at=AT - dt.timedelta(days=1),
    )  # fmt: skip


def test_what_a_message_asks_for() -> None:
    asked = peer_status(_message(Decimal("100.000000"), (CdarReason("AUTRE", "un"), CdarReason("DOUBLON"))))
    assert asked == PeerStatus(212, Reason("AUTRE", "un"), "100.00", "EUR", dt.date(2026, 11, 30))
    # More places than cents stay as written: the payment check refuses them.
    assert peer_status(_message(Decimal("100.005"))).amount == "100.005"
    assert peer_status(_message()).amount == "" and peer_status(_message()).reason is None


def test_a_party_here_may_not_set_the_other_sides_statuses_of_a_shared_invoice() -> None:
    sent = Shared(destination_platform="peer")
    received = Shared(origin_platform="local")
    assert sent.set_elsewhere(205) is not None and "platform peer" in (sent.set_elsewhere(205) or "")
    assert sent.set_elsewhere(212) is None  # the supplier is here
    assert received.set_elsewhere(212) is not None and "platform local" in (received.set_elsewhere(212) or "")
    assert received.set_elsewhere(205) is None  # the buyer is here
    assert Shared().set_elsewhere(205) is None and Shared().set_elsewhere(212) is None
