"""Pure status logic: which transitions a pipeline event causes."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation

from invoicing_status.lifecycle import (
    FINAL,
    REASON_CODES,
    REASON_REQUIRED,
    STATUS_CODES_TEXT,
    Reason,
    Status,
    allowed_next,
    allowed_reasons,
    is_allowed,
)


@dataclass(frozen=True)
class Payment:
    """A payment reported with 211 PAYMENT_SENT or 212 CASHED."""

    amount: str  # decimal, two places: "1250.00"
    currency: str  # ISO 4217
    paid_on: date

    def as_json(self) -> dict[str, str]:
        return {"amount": self.amount, "currency": self.currency, "paid_on": self.paid_on.isoformat()}

    @classmethod
    def from_json(cls, data: dict[str, str]) -> Payment:
        return cls(data["amount"], data["currency"], date.fromisoformat(data["paid_on"]))


@dataclass(frozen=True)
class Change:
    status: Status
    actor: str
    occurred_at: datetime
    source_event_id: str
    reason: Reason | None = None
    payment: Payment | None = None


@dataclass(frozen=True)
class Submitted:
    """How an invoice entered: every pipeline event carries it."""

    received_event_id: str
    received_at: datetime


@dataclass(frozen=True)
class Outcome:
    """The status a pipeline stage asks for (None: no status change)."""

    status: Status | None
    actor: str
    occurred_at: datetime
    source_event_id: str
    reason: Reason | None = None
    extra: dict[str, object] = field(default_factory=dict)
    # A status this outcome proves the invoice reached before it (the
    # destination platform acknowledged it: it was issued to it).
    implies: Status | None = None


def plan(
    current: Status | None, submitted: Submitted, outcome: Outcome, duplicate_of: str | None = None
) -> list[Change]:
    """Transitions to apply, in order.

    Topics are consumed independently, so a stage's event may arrive before
    the received event: SUBMITTED is then recorded first from the facts every
    event carries (same source event id, so it is recorded once). An outcome
    that is not a legal next step (late, duplicate or out of order) changes
    nothing: an invoice never moves backwards. For the same reason an
    outcome may come before the event of the status it ``implies``: that
    status is recorded first, from this event.
    """
    changes: list[Change] = []
    state = current
    if state is None:
        changes.append(Change(Status.SUBMITTED, "ingest", submitted.received_at, submitted.received_event_id))
        state = Status.SUBMITTED
    if duplicate_of is not None and outcome.status in (None, Status.MADE_AVAILABLE, Status.ISSUED):
        outcome = Outcome(
            Status.REJECTED,
            outcome.actor,
            outcome.occurred_at,
            outcome.source_event_id,
            # The first invoice's id is not named: this one's buyer may not
            # be that one's, and ids of invoices a party may not see stay unsaid.
            Reason(
                "REJ_UNI",
                "duplicate of an invoice already received from this seller (same invoice number, year and type)",
            ),
        )
    implied = outcome.implies
    if (
        implied is not None
        and outcome.status is not None
        and not is_allowed(state, outcome.status)
        and is_allowed(state, implied)
        and is_allowed(implied, outcome.status)
    ):
        changes.append(Change(implied, outcome.actor, outcome.occurred_at, outcome.source_event_id))
        state = implied
    if outcome.status is not None and is_allowed(state, outcome.status):
        changes.append(
            Change(outcome.status, outcome.actor, outcome.occurred_at, outcome.source_event_id, outcome.reason)
        )
    return changes


def seller_key(sirens: frozenset[str], seller_ids: list[tuple[str, str]], seller_vat_id: str, seller_name: str) -> str:
    """The seller part of the business key: its SIREN. Validate has checked
    that a valid invoice's seller SIRENs are all companies its submitter
    acts for, so one account cannot take another company's key. The other
    identifiers, the VAT id or the name serve only invoices without one
    (none reach a key today: such invoices are not valid)."""
    if sirens:
        return f"siren:{min(sirens)}"
    if seller_ids:
        value, scheme = seller_ids[0]
        return f"{scheme or 'id'}:{value}"
    if seller_vat_id:
        return f"vat:{seller_vat_id}"
    return f"name:{seller_name.strip().lower()}"


def business_key(
    sirens: frozenset[str], seller_ids: list[tuple[str, str]], seller_vat_id: str, seller_name: str,
    invoice_number: str, issue_date: str, type_code: str,
) -> str | None:  # fmt: skip
    """Seller, invoice number (BT-1), issue year (BT-2) and type (BT-3): two
    invoices sharing it are one invoice sent twice (REJ_UNI). None when the
    summary lacks the number or the date (the rule cannot apply)."""
    if not invoice_number or len(issue_date) < 4:
        return None
    seller = seller_key(sirens, seller_ids, seller_vat_id, seller_name)
    return "|".join((seller, invoice_number.strip(), issue_date[:4], type_code.strip()))


class TransitionError(Exception):
    """An UpdateStatus request the lifecycle does not allow."""

    def __init__(self, field_name: str, message: str, precondition: bool) -> None:
        super().__init__(message)
        self.field = field_name
        self.message = message
        # True: FAILED_PRECONDITION (state-dependent); False: INVALID_ARGUMENT.
        self.precondition = precondition


def _allowed_text(current: Status) -> str:
    nxt = sorted(allowed_next(current))
    return ", ".join(f"{s.value} {s.name}" for s in nxt) if nxt else "none (final status)"


def check_update(current: Status, new_code: int, reason: Reason | None, text_required: bool = True) -> Status:
    """Validate a party's status update against the lifecycle.

    ``text_required``: a required reason needs its text as well as its code
    (UpdateStatus). Another platform's CDAR message needs the code only, as
    the official rules do (BR-FR-CDV-15)."""
    try:
        new = Status(new_code)
    except ValueError:
        raise TransitionError(
            "status_code", f"status_code {new_code} is not a lifecycle status ({STATUS_CODES_TEXT})", False
        ) from None
    if current in FINAL or new not in allowed_next(current):
        raise TransitionError(
            "status_code",
            f"invoice is {current.value} {current.name}; {new.value} {new.name} is not allowed next; "
            f"allowed: {_allowed_text(current)}",
            True,
        )
    if new in REASON_REQUIRED and (reason is None or not reason.code or (text_required and not reason.text)):
        needed = "a reason code and text" if text_required else "a reason code"
        raise TransitionError("reason", f"status {new.value} {new.name} requires {needed}", False)
    if reason is not None and reason.code:
        check_reason_code(new, reason.code)
    return new


def check_reason_code(status: Status, code: str) -> None:
    """Refuse a reason code the official rules do not allow with ``status``
    (BR-FR-CDV-CL-09): the status messages the platform sends must pass them."""
    allowed = allowed_reasons(status)
    if code in allowed:
        return
    if allowed == REASON_CODES:
        why = "is not a reason code of the official list"
    else:
        why = f"is not a reason code for {status.value} {status.name}; allowed: {', '.join(sorted(allowed))}"
    raise TransitionError("reason.code", f"{code[:40]!r} {why}", False)


def iso_date(value: str) -> date | None:
    """A YYYY-MM-DD date, or None for anything else."""
    value = value.strip()
    try:
        return date.fromisoformat(value) if len(value) == 10 else None
    except ValueError:
        return None


PAYMENT_STATUSES = frozenset({Status.PAYMENT_SENT, Status.CASHED})
_CURRENCY = re.compile(r"[A-Z]{3}")
_MAX_AMOUNT = Decimal("1e15")


def check_payment(
    status_code: int, amount: str, currency: str, paid_on: str, invoice_currency: str, today: date
) -> Payment | None:
    """The payment of an UpdateStatus request: required with 211 and 212,
    refused with any other status (all fields empty: no payment given).
    ``currency`` defaults to the invoice's (BT-5)."""
    given = bool(amount or currency or paid_on)
    if status_code not in PAYMENT_STATUSES:
        if given:
            raise TransitionError(
                "payment", "a payment goes with 211 PAYMENT_SENT or 212 CASHED only, not with this status", False
            )
        return None
    name = Status(status_code).name
    if not amount or not paid_on:
        raise TransitionError(
            "payment", f"status {status_code} {name} requires a payment: payment.amount and payment.paid_on", False
        )
    try:
        value = Decimal(amount.strip())
    except InvalidOperation:
        raise TransitionError("payment.amount", f"{amount[:40]!r} is not a decimal number", False) from None
    exponent = value.as_tuple().exponent
    if not value.is_finite() or value <= 0 or value >= _MAX_AMOUNT:
        raise TransitionError("payment.amount", "must be more than 0 and less than 10^15", False)
    if not isinstance(exponent, int) or exponent < -2:
        raise TransitionError("payment.amount", "has more than 2 decimals", False)
    currency = currency.strip() or invoice_currency
    if not _CURRENCY.fullmatch(currency):
        raise TransitionError("payment.currency", "must be an ISO 4217 code such as EUR", False)
    paid = iso_date(paid_on)
    if paid is None:
        raise TransitionError("payment.paid_on", f"{paid_on[:40]!r} is not a date (YYYY-MM-DD)", False)
    # A day of slack: the caller's today may be ahead of UTC.
    if paid > today + timedelta(days=1):
        raise TransitionError("payment.paid_on", f"{paid.isoformat()} is in the future", False)
    return Payment(str(value.quantize(Decimal("0.01"))), currency, paid)
