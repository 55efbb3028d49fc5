"""The CDAR message of one status of an invoice's history: pure mapping.

Who issues the status follows from who set it (the history row's actor):
the platform for the statuses of the transmission phase (those a platform
sets while carrying the invoice, and 221), the buyer for
``buyer:<subject>``, the seller for ``supplier:<subject>``. The
message goes to the other party to the invoice; for the platform's own
statuses, to the seller. docs/reform.md has the table.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal, InvalidOperation
from typing import Final

from invoicing.v1 import common_pb2

from invoicing_common.parties import seller as seller_of

from .model import (
    PHASE_PROCESSING,
    ROLE_BUYER,
    ROLE_PLATFORM,
    ROLE_SELLER,
    SCHEME_ADDRESS,
    SCHEME_PLATFORM,
    SCHEME_SIREN,
    InvoiceRef,
    LifecycleMessage,
    Party,
    Reason,
    phase_of,
)

_NAMESPACE: Final = uuid.UUID("6f0b8f0e-57c1-4c8f-9a53-0c5d1a3c2b7e")


class NotExpressible(ValueError):
    """The invoice lacks what a CDAR message must carry (e.g. an unreadable
    document has no BT-1 or seller); the message names the field."""


def _siren(ids: list[tuple[str, str]], vat: str) -> str | None:
    for value, scheme in ids:
        if scheme == SCHEME_SIREN and len(value) == 9 and value.isdigit():
            return value
        if scheme == "0009" and len(value) == 14 and value.isdigit():
            return value[:9]
    if vat.upper().startswith("FR") and len(vat) == 13 and vat[4:].isdigit():
        return vat[4:]
    return None


def _party(role: str, siren: str, name: str) -> Party:
    # A party that is not a platform is reached at its electronic address;
    # under the French directory that is its SIREN (scheme 0225).
    return Party(
        role=role, global_id=siren, scheme=SCHEME_SIREN, name=name or None, uri=siren, uri_scheme=SCHEME_ADDRESS
    )


def message_id(invoice_id: str, position: int, status_code: int) -> str:
    """Stable: the same history row always gives the same message id, so a
    receiver can drop a message sent twice."""
    return f"CDV-{uuid.uuid5(_NAMESPACE, f'{invoice_id}:{position}:{status_code}')}"


def lifecycle_message(
    invoice_id: str,
    summary: common_pb2.InvoiceSummary,
    change: common_pb2.StatusChange,
    position: int,
    platform_id: str,
    platform_name: str = "",
) -> LifecycleMessage:
    """The message of ``change``, the ``position``-th row (from 0) of the
    history of invoice ``invoice_id``, sent by platform ``platform_id``."""
    if not summary.invoice_number:
        raise NotExpressible("summary.invoice_number (BT-1) is empty: the document was not readable")
    try:
        issued_on = dt.date.fromisoformat(summary.issue_date)
    except ValueError:
        raise NotExpressible("summary.issue_date (BT-2) is missing or not a date") from None
    sellers = seller_of(summary).sirens
    seller = min(sellers) if sellers else None
    if seller is None:
        raise NotExpressible("summary.seller_ids: the seller has no SIREN")
    buyer = _siren([(i.value, i.scheme) for i in summary.buyer_ids], summary.buyer_vat_id)
    platform = Party(role=ROLE_PLATFORM, global_id=platform_id, scheme=SCHEME_PLATFORM, name=platform_name or None)
    seller_party = _party(ROLE_SELLER, seller, summary.seller_name)
    actor = change.actor.split(":", 1)[0]
    # A status of the transmission phase (305) is always issued by a
    # platform (BR-FR-CDV-CL-03), even when a buyer asked for it (221).
    if phase_of(change.status_code) == PHASE_PROCESSING and actor in ("buyer", "supplier"):
        if buyer is None:
            raise NotExpressible("summary.buyer_ids: the buyer has no SIREN")
        buyer_party = _party(ROLE_BUYER, buyer, summary.buyer_name)
        issuer, recipient = (buyer_party, seller_party) if actor == "buyer" else (seller_party, buyer_party)
    else:
        # The platform's own status (deposit, routing, rejection...): it
        # issues it, and the seller is told.
        issuer, recipient = Party(role=ROLE_PLATFORM, name=platform_name or None), seller_party
    amount = currency = None
    if change.HasField("payment") and change.payment.amount:
        try:
            amount = Decimal(change.payment.amount)
        except InvalidOperation:
            raise NotExpressible("history.payment.amount is not a decimal") from None
        currency = change.payment.currency or summary.currency or None
    at = change.at.ToDatetime(tzinfo=dt.UTC)
    reasons = (Reason(change.reason.code, change.reason.text or None),) if change.reason.code else ()
    return LifecycleMessage(
        message_id=message_id(invoice_id, position, change.status_code),
        issued_at=at,
        status_code=change.status_code,
        invoice=InvoiceRef(
            number=summary.invoice_number,
            issue_date=issued_on,
            seller_siren=seller,
            type_code=summary.type_code or None,
        ),
        sender=platform,
        issuer=issuer,
        recipients=(recipient,),
        reasons=reasons,
        amount=amount,
        currency=currency,
        status_at=at,
    )
