"""Invoices shared with another platform: the pure rules of the CDAR
exchange (docs/reform.md, "Platform to platform"). No I/O.

An invoice is shared when another platform delivered it here (its origin:
this platform is the receiving side, the buyer's) or when this platform
delivered it to another (its destination: this platform is the sending
side, the seller's). Each side sets its own statuses and tells the other:

- the receiving side: 203, 204-208, 210, 211, 213, 214, 221 (its routing,
  its checks and its buyer's decisions and payment);
- the sending side: 209, 212, 220, 224-228 (its supplier's).

A status applied from a peer's message has the actor ``platform:<peer id>``
and is never sent back to that peer. A peer may set, on an invoice shared
with it, the statuses of its side only.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from invoicing.v1 import common_pb2

from invoicing_common.auth.principal import ROLE_PLATFORM, Principal
from invoicing_common.cdar import LifecycleMessage
from invoicing_common.platforms import Peer, Registry
from invoicing_status.domain import Change, Payment, TransitionError, check_payment, check_update, iso_date
from invoicing_status.lifecycle import (
    BUYER_STATUSES,
    RELEASES_BUSINESS_KEY,
    SUPPLIER_STATUSES,
    Reason,
    Status,
    code_ranges,
    is_allowed,
)

# The receiving side's statuses are its buyer's, and those its platform
# sets on the invoice it received (made available, rejected); the sending
# side's are its supplier's.
RECEIVING_SIDE: frozenset[Status] = BUYER_STATUSES | {Status.MADE_AVAILABLE, Status.REJECTED}
SENDING_SIDE: frozenset[Status] = SUPPLIER_STATUSES
# Every status that may travel between platforms: others are never looked up.
EXCHANGED: frozenset[Status] = RECEIVING_SIDE | SENDING_SIDE


def peer_actor(peer_id: str) -> str:
    """The history's actor of a status applied from that peer's message."""
    return f"platform:{peer_id}"


@dataclass(frozen=True)
class Shared:
    """Which platform, if any, an invoice is shared with (migration 008)."""

    origin_platform: str = ""
    destination_platform: str = ""

    def with_peer(self, peer_id: str) -> bool:
        return bool(peer_id) and peer_id in (self.origin_platform, self.destination_platform)

    def recipient(self, status: Status, actor: str) -> str | None:
        """The peer that must be told of ``status`` (set by ``actor``), if any."""
        origin, destination = self.origin_platform, self.destination_platform
        if origin and status in RECEIVING_SIDE and actor != peer_actor(origin):
            return origin
        if destination and status in SENDING_SIDE and actor != peer_actor(destination):
            return destination
        return None

    def set_elsewhere(self, status_code: int) -> str | None:
        """Why a party on this platform may not set ``status_code`` through
        UpdateStatus (None: it may): on a shared invoice, the other side's
        statuses come from that platform's messages only, so that the two
        histories never disagree."""
        if self.destination_platform and status_code in {s.value for s in RECEIVING_SIDE}:
            return (
                f"the invoice was delivered to platform {self.destination_platform}:"
                f" status {status_code} is set there, by its buyer, and comes back from it"
            )
        if self.origin_platform and status_code in {s.value for s in SENDING_SIDE}:
            return (
                f"the invoice came from platform {self.origin_platform}:"
                f" status {status_code} is set there, by its supplier, and comes from it"
            )
        return None

    def settable_by(self, peer_id: str) -> frozenset[Status]:
        """The statuses ``peer_id`` may set on this invoice: those of its side."""
        allowed: frozenset[Status] = frozenset()
        if peer_id and self.destination_platform == peer_id:
            allowed |= RECEIVING_SIDE
        if peer_id and self.origin_platform == peer_id:
            allowed |= SENDING_SIDE
        return allowed


class NotAPeer(Exception):
    """The caller is not a platform this one exchanges with (PERMISSION_DENIED)."""


class NotTheirs(Exception):
    """The status is not the calling platform's to set on this invoice (PERMISSION_DENIED)."""


class BadMessage(Exception):
    """A message this platform cannot apply whatever its invoice's state
    (INVALID_ARGUMENT); ``field`` names the part at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def calling_peer(principal: Principal, registry: Registry) -> Peer:
    """The registered platform the caller's account is; raises NotAPeer.
    The access policy asks for the role already: checked again here, as
    the decision must not rest on one place alone."""
    if not principal.has_role(ROLE_PLATFORM):
        raise NotAPeer(f"this account needs the role {ROLE_PLATFORM}")
    peer = registry.calling(principal.client_id) if principal.client_id else None
    if peer is None:
        raise NotAPeer("this account is not a platform registered here (PLATFORMS_FILE)")
    return peer


# A CDAR message id (MDT-2) is short; a long one is not ours to keep.
MAX_MESSAGE_ID_CHARS = 200


def check_envelope(peer: Peer, sender_id: str | None, message_id: str) -> None:
    """The message must be sent by the calling platform (its id in the
    sender party, scheme 0238) and carry an id we can keep (deduplication)."""
    if sender_id != peer.id:
        raise BadMessage("ExchangedDocument/SenderTradeParty/GlobalID", f"is not the calling platform ({peer.id})")
    if len(message_id) > MAX_MESSAGE_ID_CHARS:
        raise BadMessage("ExchangedDocument/ID", f"is longer than {MAX_MESSAGE_ID_CHARS} characters")


@dataclass(frozen=True)
class InvoiceKey:
    """How a message names its invoice: seller SIREN, BT-1, BT-2 (BT-3 if given)."""

    seller_siren: str
    number: str
    issue_date: dt.date
    type_code: str | None = None


@dataclass(frozen=True)
class Candidate:
    """An invoice the message may be about, as the store has it."""

    invoice_id: str
    status: Status
    seller_sirens: frozenset[str]
    summary: common_pb2.InvoiceSummary
    shared: Shared


def match(candidates: Iterable[Candidate], key: InvoiceKey, peer_id: str) -> Candidate | None:
    """The one invoice shared with ``peer_id`` that ``key`` names; None when
    there is none, or more than one (the caller answers both alike, naming
    no invoice).

    The same invoice (seller, number, year, type) may exist twice: the
    first was refused before its buyer had it (213, 501, 221 release the
    business key) and sent again. The one still under way is meant then."""
    found = [
        c
        for c in candidates
        if c.shared.with_peer(peer_id)
        and key.seller_siren in c.seller_sirens
        and c.summary.invoice_number.strip() == key.number.strip()
        and iso_date(c.summary.issue_date) == key.issue_date
        and (not key.type_code or not c.summary.type_code or c.summary.type_code.strip() == key.type_code.strip())
    ]
    if len(found) > 1:
        found = [c for c in found if c.status not in RELEASES_BUSINESS_KEY]
    return found[0] if len(found) == 1 else None


@dataclass(frozen=True)
class PeerStatus:
    """What a peer's message asks for."""

    status_code: int
    reason: Reason | None = None
    # The MEN amount ("" when none) and its currency; paid on the status's day.
    amount: str = ""
    currency: str = ""
    status_on: dt.date | None = None


def plan_peer_update(
    current: Status, shared: Shared, peer_id: str, asked: PeerStatus, invoice_currency: str, at: dt.datetime,
    source_event_id: str,
) -> list[Change]:  # fmt: skip
    """The changes a peer's message makes to an invoice now at ``current``:
    the lifecycle's checks of UpdateStatus (transitions, reasons, payment),
    the peer in the party's place. Raises NotTheirs or TransitionError."""
    try:
        new = Status(asked.status_code)
    except ValueError:
        raise TransitionError(
            "status_code", f"{asked.status_code} is not a status of this platform's lifecycle", False
        ) from None
    allowed = shared.settable_by(peer_id)
    if new not in allowed:
        mine = code_ranges({s.value for s in allowed}) or "none"
        raise NotTheirs(f"status {new.value} {new.name} is not platform {peer_id}'s to set on this invoice ({mine})")
    actor = peer_actor(peer_id)
    changes: list[Change] = []
    state = current
    if (
        shared.destination_platform == peer_id
        and state is Status.ISSUED
        and not is_allowed(state, new)
        and is_allowed(Status.RECEIVED, new)
    ):
        # The destination speaks of the invoice: it has it. Its message may
        # come before route's delivered event does; 202 is recorded first,
        # from the message (the delivered event then changes nothing).
        changes.append(Change(Status.RECEIVED, actor, at, source_event_id))
        state = Status.RECEIVED
    new = check_update(state, asked.status_code, asked.reason, text_required=False)
    changes.append(Change(new, actor, at, source_event_id, asked.reason, _payment(new, asked, invoice_currency, at)))
    return changes


def invoice_key(message: LifecycleMessage) -> InvoiceKey:
    ref = message.invoice
    return InvoiceKey(ref.seller_siren, ref.number, ref.issue_date, ref.type_code)


def peer_status(message: LifecycleMessage) -> PeerStatus:
    """What ``message`` asks for. The platform keeps one reason per status:
    the first the message gives."""
    reason = Reason(message.reasons[0].code, message.reasons[0].text or "") if message.reasons else None
    amount = ""
    if message.amount is not None:
        # A peer may write more places than it needs ("100.000000"); more
        # places than cents are refused by the payment check.
        cents = message.amount.quantize(Decimal("0.01")) if message.amount.is_finite() else message.amount
        amount = str(cents if cents == message.amount else message.amount)
    status_on = message.status_at.date() if message.status_at is not None else None
    return PeerStatus(message.status_code, reason, amount, message.currency or "", status_on)


def _payment(status: Status, asked: PeerStatus, invoice_currency: str, at: dt.datetime) -> Payment | None:
    if status is Status.PAYMENT_SENT and not asked.amount:
        # The official rules ask for the amount with 212 only: a 211 the
        # rules accept is not refused for the lack of it.
        return None
    paid_on = (asked.status_on or at.date()).isoformat() if asked.amount else ""
    return check_payment(status.value, asked.amount, asked.currency, paid_on, invoice_currency, at.date())
