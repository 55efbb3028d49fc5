"""What a CDAR lifecycle message says, as plain values: pure, no I/O.

One message carries one status of one invoice, as the French reform uses
CDAR between platforms. Codes stay plain ints and strings (the status
service owns their meaning); the official BR-FR-CDV rules, not this
module, decide whether a combination is valid (validation.py).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

# MDT-3, the profile of a CDAR exchanged between platforms. The other
# official value, einvoicingF2, is only for a message whose one recipient
# is the public concentrator (PPF).
GUIDELINE_INVOICE: Final = "urn.cpro.gouv.fr:1p0:CDV:invoice"
GUIDELINE_PPF: Final = "urn.cpro.gouv.fr:1p0:CDV:einvoicingF2"
BUSINESS_PROCESS_REGULATED: Final = "REGULATED"

# MDT-77, AcknowledgementDocument/TypeCode: which phase the status belongs to.
PHASE_TRANSMISSION: Final = "305"
PHASE_PROCESSING: Final = "23"
# Statuses a platform sets while carrying the invoice (deposited, issued,
# received, made available, rejected, routing error, inadmissible); every
# other status is set by a party to the invoice while processing it.
TRANSMISSION_STATUSES: Final = frozenset({200, 201, 202, 203, 213, 221, 501})

# UNTDID 3035 roles the rules know.
ROLE_SELLER: Final = "SE"
ROLE_BUYER: Final = "BY"
ROLE_PLATFORM: Final = "WK"
ROLE_PPF: Final = "DFH"

# ISO 6523 schemes of GlobalID and URIID.
SCHEME_SIREN: Final = "0002"
SCHEME_SIRET: Final = "0009"
SCHEME_ADDRESS: Final = "0225"
SCHEME_PLATFORM: Final = "0238"

# MDT-207, the characteristic that carries the amount cashed (status 212).
CHARACTERISTIC_CASHED: Final = "MEN"


def phase_of(status_code: int) -> str:
    return PHASE_TRANSMISSION if status_code in TRANSMISSION_STATUSES else PHASE_PROCESSING


def _to_utc_second(value: dt.datetime, name: str) -> dt.datetime:
    # Format 204 has no zone and no fraction: the message says UTC, to the
    # second, so the model holds exactly what survives a round trip.
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")
    return value.astimezone(dt.UTC).replace(microsecond=0)


@dataclass(frozen=True, kw_only=True)
class Party:
    """A trade party of the message (sender, issuer, recipient)."""

    role: str
    global_id: str | None = None
    scheme: str | None = None
    name: str | None = None
    # Electronic address (URIUniversalCommunication/URIID), e.g. scheme 0225.
    uri: str | None = None
    uri_scheme: str | None = None


@dataclass(frozen=True)
class Reason:
    """MDT-113 reason code and its free text (MDT-114)."""

    code: str
    text: str | None = None


@dataclass(frozen=True, kw_only=True)
class InvoiceRef:
    """The invoice the status is about."""

    number: str  # BT-1
    issue_date: dt.date  # BT-2
    seller_siren: str  # the seller's SIREN (scheme 0002)
    type_code: str | None = None  # BT-3, e.g. "380"


@dataclass(frozen=True, kw_only=True)
class LifecycleMessage:
    message_id: str
    issued_at: dt.datetime
    status_code: int
    invoice: InvoiceRef
    # The platform that sends the message (role WK, scheme 0238).
    sender: Party
    # Who set the status: a platform (WK) in the transmission phase, a
    # party to the invoice (SE, BY...) with its GlobalID in the processing
    # phase (BR-FR-CDV-07, -CL-03).
    issuer: Party
    recipients: tuple[Party, ...]
    reasons: tuple[Reason, ...] = ()
    # Status 212: the amount cashed.
    amount: Decimal | None = None
    currency: str | None = None
    # When the status took effect (MDT-78); set to issued_at when not given.
    status_at: dt.datetime | None = None
    # MDT-77; derived from the status code when left empty, once: give it
    # again (or "") to dataclasses.replace along with a new status_code.
    phase: str = ""
    business_process: str = BUSINESS_PROCESS_REGULATED
    guideline: str = GUIDELINE_INVOICE

    def __post_init__(self) -> None:
        # Frozen: normalise through object.__setattr__, once, here.
        issued_at = _to_utc_second(self.issued_at, "issued_at")
        object.__setattr__(self, "issued_at", issued_at)
        status_at = issued_at if self.status_at is None else _to_utc_second(self.status_at, "status_at")
        object.__setattr__(self, "status_at", status_at)
        object.__setattr__(self, "recipients", tuple(self.recipients))
        object.__setattr__(self, "reasons", tuple(self.reasons))
        if not self.phase:
            object.__setattr__(self, "phase", phase_of(self.status_code))
        if not self.recipients:
            raise ValueError("a message needs at least one recipient")
