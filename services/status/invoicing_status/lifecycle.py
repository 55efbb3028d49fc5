"""The French e-invoicing lifecycle (statuses 200-213): pure data and rules.

docs/lifecycle.md renders the same table; tests/unit/test_status_lifecycle.py
keeps the two honest.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class Status(IntEnum):
    SUBMITTED = 200
    ISSUED = 201
    RECEIVED = 202
    MADE_AVAILABLE = 203
    IN_HAND = 204
    APPROVED = 205
    PARTIALLY_APPROVED = 206
    DISPUTED = 207
    SUSPENDED = 208
    COMPLETED = 209
    REFUSED = 210
    PAYMENT_SENT = 211
    CASHED = 212
    REJECTED = 213


FRENCH_NAMES: dict[Status, str] = {
    Status.SUBMITTED: "Déposée",
    Status.ISSUED: "Émise",
    Status.RECEIVED: "Reçue",
    Status.MADE_AVAILABLE: "Mise à disposition",
    Status.IN_HAND: "Prise en charge",
    Status.APPROVED: "Approuvée",
    Status.PARTIALLY_APPROVED: "Approuvée partiellement",
    Status.DISPUTED: "En litige",
    Status.SUSPENDED: "Suspendue",
    Status.COMPLETED: "Complétée",
    Status.REFUSED: "Refusée",
    Status.PAYMENT_SENT: "Paiement transmis",
    Status.CASHED: "Encaissée",
    Status.REJECTED: "Rejetée",
}

# The one table of allowed transitions. A status absent as a key is final.
_BUYER_DECISIONS = frozenset(
    {Status.APPROVED, Status.PARTIALLY_APPROVED, Status.DISPUTED, Status.SUSPENDED, Status.REFUSED}
)
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.SUBMITTED: frozenset({Status.ISSUED, Status.MADE_AVAILABLE, Status.REJECTED}),
    Status.ISSUED: frozenset({Status.RECEIVED, Status.REJECTED}),
    Status.RECEIVED: frozenset({Status.MADE_AVAILABLE, Status.REJECTED}),
    Status.MADE_AVAILABLE: frozenset({Status.IN_HAND, Status.PAYMENT_SENT, *_BUYER_DECISIONS}),
    Status.IN_HAND: frozenset({Status.PAYMENT_SENT, *_BUYER_DECISIONS}),
    Status.APPROVED: frozenset({Status.PAYMENT_SENT}),
    Status.PARTIALLY_APPROVED: frozenset({Status.PAYMENT_SENT, Status.DISPUTED}),
    Status.DISPUTED: frozenset({Status.APPROVED, Status.PARTIALLY_APPROVED, Status.SUSPENDED, Status.REFUSED}),
    Status.SUSPENDED: frozenset({Status.COMPLETED, Status.REFUSED}),
    # Completed: the supplier sent what was missing; back in the buyer's hands.
    Status.COMPLETED: frozenset({Status.IN_HAND, *(_BUYER_DECISIONS - {Status.SUSPENDED})}),
    Status.PAYMENT_SENT: frozenset({Status.CASHED}),
}
FINAL: frozenset[Status] = frozenset({Status.REFUSED, Status.REJECTED, Status.CASHED})
REASON_REQUIRED: frozenset[Status] = frozenset(
    {Status.PARTIALLY_APPROVED, Status.DISPUTED, Status.SUSPENDED, Status.REFUSED, Status.REJECTED}
)
# The pipeline's first final outcome for an invoice (end-to-end latency ends here).
PIPELINE_OUTCOMES: frozenset[Status] = frozenset({Status.ISSUED, Status.MADE_AVAILABLE, Status.REJECTED})
REJECTION_REASONS: frozenset[str] = frozenset(
    {"REJ_SEMAN", "REJ_UNI", "REJ_COH", "REJ_ADR", "REJ_CONT_B2G", "REJ_TECH"}
)


def allowed_next(current: Status) -> frozenset[Status]:
    return TRANSITIONS.get(current, frozenset())


def is_allowed(current: Status | None, new: Status) -> bool:
    if current is None:
        return new is Status.SUBMITTED
    return new in allowed_next(current)


@dataclass(frozen=True)
class Reason:
    code: str
    text: str


# Who may set which status through UpdateStatus (the pipeline sets 200, 201,
# 202, 203 and 213 itself).
BUYER_STATUSES: frozenset[Status] = frozenset(
    {
        Status.IN_HAND,
        Status.APPROVED,
        Status.PARTIALLY_APPROVED,
        Status.DISPUTED,
        Status.SUSPENDED,
        Status.REFUSED,
        Status.PAYMENT_SENT,
    }
)
SUPPLIER_STATUSES: frozenset[Status] = frozenset({Status.COMPLETED, Status.CASHED})

# Equivalent Chorus Pro status (the B2G platform's own names); None where
# Chorus Pro has no counterpart. See docs/lifecycle.md.
CHORUS_PRO: dict[Status, str | None] = {
    Status.SUBMITTED: "DEPOSEE",
    Status.ISSUED: "EN_COURS_ACHEMINEMENT",
    Status.RECEIVED: "EN_COURS_ACHEMINEMENT",
    Status.MADE_AVAILABLE: "MISE_A_DISPOSITION",
    Status.IN_HAND: "MISE_A_DISPOSITION",
    Status.APPROVED: "SERVICE_FAIT",
    Status.PARTIALLY_APPROVED: "SERVICE_FAIT",
    Status.DISPUTED: None,
    Status.SUSPENDED: "SUSPENDUE",
    Status.COMPLETED: "COMPLETEE",
    Status.REFUSED: "REJETEE",
    Status.PAYMENT_SENT: "MISE_EN_PAIEMENT",
    Status.CASHED: None,
    Status.REJECTED: "A_RECYCLER",
}

# UNCL4343 Invoice Response status codes as the Peppol Invoice Response uses
# them: AB acknowledged, IP in process, UQ under query, CA conditionally
# accepted, RE rejected, AP accepted, PD paid.
UNCL4343: dict[Status, str | None] = {
    Status.SUBMITTED: "AB",
    Status.ISSUED: None,
    Status.RECEIVED: "AB",
    Status.MADE_AVAILABLE: None,
    Status.IN_HAND: "IP",
    Status.APPROVED: "AP",
    Status.PARTIALLY_APPROVED: "CA",
    Status.DISPUTED: "UQ",
    Status.SUSPENDED: "UQ",
    Status.COMPLETED: None,
    Status.REFUSED: "RE",
    Status.PAYMENT_SENT: "PD",
    Status.CASHED: None,
    Status.REJECTED: "RE",
}
