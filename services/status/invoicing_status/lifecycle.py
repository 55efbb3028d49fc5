"""The French e-invoicing lifecycle: pure data and rules.

The statuses, their reason codes and which of them need a reason are those
of the official CDAR rules (BR-FR-CDV, the closed lists CL-06 and CL-09 and
rule 15). tests/unit/test_lifecycle_official.py checks them against the
official release; docs/lifecycle.md renders the same tables, and
tests/unit/test_status_domain.py keeps the two honest.
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
    REVIEWED = 214
    CANCELLED = 220
    ROUTING_ERROR = 221
    DIRECT_PAYMENT_REQUESTED = 224
    FACTORED = 225
    FACTORED_CONFIDENTIAL = 226
    PAYMENT_ACCOUNT_CHANGED = 227
    NOT_FACTORED = 228
    INADMISSIBLE = 501


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
    Status.REVIEWED: "Visée",
    Status.CANCELLED: "Annulée",
    Status.ROUTING_ERROR: "Erreur de routage",
    Status.DIRECT_PAYMENT_REQUESTED: "Demande de paiement direct",
    Status.FACTORED: "Affacturée",
    Status.FACTORED_CONFIDENTIAL: "Affacturée confidentiel",
    Status.PAYMENT_ACCOUNT_CHANGED: "Changement de compte à payer",
    Status.NOT_FACTORED: "Non affacturée",
    Status.INADMISSIBLE: "Irrecevable",
}

# The official closed list of status codes also holds these. None of them is
# a status of an invoice's lifecycle as this platform keeps it, and their
# use is not settled in the rules we check against, so the platform never
# produces them and UpdateStatus refuses them (they are not in Status).
OFFICIAL_CODES_NOT_PRODUCED: frozenset[int] = frozenset({250, 251, 300, 301, 400, 401, 500, 601})

# The one table of allowed transitions. A status absent as a key is final.
_BUYER_DECISIONS = frozenset(
    {Status.APPROVED, Status.PARTIALLY_APPROVED, Status.DISPUTED, Status.SUSPENDED, Status.REFUSED}
)
# Who is to be paid (a factor, a subcontractor, another account): the
# supplier side may say so at any point between the invoice reaching the
# buyer and its payment. The cancellation goes with them: until the buyer
# has paid, the supplier may still withdraw its invoice (with a credit note).
_PAYEE_NOTICES = frozenset(
    {
        Status.DIRECT_PAYMENT_REQUESTED,
        Status.FACTORED,
        Status.FACTORED_CONFIDENTIAL,
        Status.PAYMENT_ACCOUNT_CHANGED,
    }
)
_SUPPLIER_STEPS = frozenset({Status.CANCELLED, *_PAYEE_NOTICES})
# A payee notice does not move the buyer's processing, but an invoice has
# one current status: after one, the buyer goes on as from "in hand".
_AFTER_PAYEE_NOTICE = frozenset(
    {Status.IN_HAND, Status.REVIEWED, Status.PAYMENT_SENT, *_BUYER_DECISIONS, *_SUPPLIER_STEPS}
)
TRANSITIONS: dict[Status, frozenset[Status]] = {
    # Inadmissible: the document could not be processed at all (empty,
    # unreadable, not an invoice, too large); rejected: the rules refused it.
    Status.SUBMITTED: frozenset({Status.ISSUED, Status.MADE_AVAILABLE, Status.REJECTED, Status.INADMISSIBLE}),
    # The receiving platform may find the buyer is not one of its own.
    Status.ISSUED: frozenset({Status.RECEIVED, Status.REJECTED, Status.ROUTING_ERROR, Status.CANCELLED}),
    Status.RECEIVED: frozenset({Status.MADE_AVAILABLE, Status.REJECTED, Status.ROUTING_ERROR, Status.CANCELLED}),
    Status.MADE_AVAILABLE: frozenset(
        {
            Status.IN_HAND,
            Status.REVIEWED,
            Status.PAYMENT_SENT,
            Status.ROUTING_ERROR,
            *_BUYER_DECISIONS,
            *_SUPPLIER_STEPS,
        }
    ),
    Status.IN_HAND: frozenset(
        {Status.REVIEWED, Status.PAYMENT_SENT, Status.ROUTING_ERROR, *_BUYER_DECISIONS, *_SUPPLIER_STEPS}
    ),
    # Reviewed (visée): checked by the buyer, its decision still to come.
    Status.REVIEWED: frozenset({Status.PAYMENT_SENT, *_BUYER_DECISIONS, *_SUPPLIER_STEPS}),
    Status.APPROVED: frozenset({Status.PAYMENT_SENT, *_SUPPLIER_STEPS}),
    Status.PARTIALLY_APPROVED: frozenset({Status.PAYMENT_SENT, Status.DISPUTED, *_SUPPLIER_STEPS}),
    Status.DISPUTED: frozenset(
        {Status.APPROVED, Status.PARTIALLY_APPROVED, Status.SUSPENDED, Status.REFUSED, *_SUPPLIER_STEPS}
    ),
    Status.SUSPENDED: frozenset({Status.COMPLETED, Status.REFUSED, *_SUPPLIER_STEPS}),
    # Completed: the supplier sent what was missing; back in the buyer's hands.
    Status.COMPLETED: frozenset(
        {Status.IN_HAND, Status.REVIEWED, *(_BUYER_DECISIONS - {Status.SUSPENDED}), *_SUPPLIER_STEPS}
    ),
    Status.PAYMENT_SENT: frozenset({Status.CASHED}),
    Status.DIRECT_PAYMENT_REQUESTED: _AFTER_PAYEE_NOTICE - {Status.DIRECT_PAYMENT_REQUESTED},
    # Only a factored invoice can stop being factored.
    Status.FACTORED: (_AFTER_PAYEE_NOTICE - {Status.FACTORED}) | {Status.NOT_FACTORED},
    Status.FACTORED_CONFIDENTIAL: (_AFTER_PAYEE_NOTICE - {Status.FACTORED_CONFIDENTIAL}) | {Status.NOT_FACTORED},
    Status.PAYMENT_ACCOUNT_CHANGED: _AFTER_PAYEE_NOTICE - {Status.PAYMENT_ACCOUNT_CHANGED},
    Status.NOT_FACTORED: _AFTER_PAYEE_NOTICE,
}
FINAL: frozenset[Status] = frozenset(
    {
        Status.REFUSED,
        Status.CASHED,
        Status.REJECTED,
        Status.CANCELLED,
        Status.ROUTING_ERROR,
        Status.INADMISSIBLE,
    }
)
# The pipeline's first final outcome for an invoice (end-to-end latency ends here).
PIPELINE_OUTCOMES: frozenset[Status] = frozenset(
    {Status.ISSUED, Status.MADE_AVAILABLE, Status.REJECTED, Status.INADMISSIBLE}
)
# The platform's own refusals of a document: it never reaches the buyer.
PLATFORM_REFUSALS: frozenset[Status] = frozenset({Status.REJECTED, Status.INADMISSIBLE})
# Final statuses after which the same invoice (seller, number, year, type)
# may be sent again: it was refused before the buyer had it, or (routing
# error) it reached the wrong buyer and goes out again once the directory
# is right. They release the invoice's business key.
RELEASES_BUSINESS_KEY: frozenset[Status] = frozenset({Status.REJECTED, Status.INADMISSIBLE, Status.ROUTING_ERROR})


def allowed_next(current: Status) -> frozenset[Status]:
    return TRANSITIONS.get(current, frozenset())


def is_allowed(current: Status | None, new: Status) -> bool:
    if current is None:
        return new is Status.SUBMITTED
    return new in allowed_next(current)


def reachable_from(start: Status) -> frozenset[Status]:
    """``start`` and every status some path of the table leads to from it."""
    seen = {start}
    todo = [start]
    while todo:
        for nxt in allowed_next(todo.pop()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return frozenset(seen)


# Made available to the buyer on this platform (203) or any status after it.
REACHED_THE_BUYER: frozenset[Status] = reachable_from(Status.MADE_AVAILABLE)
# Still owed: made available and not yet at an end (cashed, refused,
# cancelled, routing error).
OWED: frozenset[Status] = REACHED_THE_BUYER - FINAL


def code_ranges(codes: frozenset[int] | set[int]) -> str:
    """``200-214, 220-221, 501``: codes as the messages name them."""
    runs: list[tuple[int, int]] = []
    for code in sorted(codes):
        if runs and runs[-1][1] == code - 1:
            runs[-1] = (runs[-1][0], code)
        else:
            runs.append((code, code))
    return ", ".join(str(first) if first == last else f"{first}-{last}" for first, last in runs)


STATUS_CODES_TEXT = code_ranges({s.value for s in Status})


@dataclass(frozen=True)
class Reason:
    code: str
    text: str


# Every reason code of the official closed list (BR-FR-CDV-CL-09).
REASON_CODES: frozenset[str] = frozenset(
    {
        "NON_TRANSMISE", "JUSTIF_ABS", "ROUTAGE_ERR", "AUTRE", "COORD_BANC_ERR", "TX_TVA_ERR",
        "MONTANTTOTAL_ERR", "CALCUL_ERR", "NON_CONFORME", "DOUBLON", "DEST_INC", "DEST_ERR", "TRANSAC_INC",
        "EMMET_INC", "CONTRAT_TERM", "DOUBLE_FACT", "CMD_ERR", "ADR_ERR", "SIRET_ERR", "CODE_ROUTAGE_ERR",
        "REF_CT_ABSENT", "REF_ERR", "PU_ERR", "REM_ERR", "QTE_ERR", "ART_ERR", "MODPAI_ERR", "QUALITE_ERR",
        "LIVR_INCOMP", "REJ_SEMAN", "REJ_UNI", "REJ_COH", "REJ_ADR", "REJ_CONT_B2G", "REJ_REF_PJ", "REJ_ASS_PJ",
        "IRR_VIDE_F", "IRR_TYPE_F", "IRR_SYNTAX", "IRR_TAILLE_PJ", "IRR_NOM_PJ", "IRR_VID_PJ", "IRR_EXT_DOC",
        "IRR_TAILLE_F", "IRR_ANTIVIRUS",
    }
)  # fmt: skip

# The statuses for which the official rules narrow the reason codes; any
# other status accepts any code of REASON_CODES (or none).
STATUS_REASONS: dict[Status, frozenset[str]] = {
    # "Not transmitted": deposited, but the buyer has no receiving platform.
    Status.SUBMITTED: frozenset({"NON_TRANSMISE"}),
    Status.PARTIALLY_APPROVED: frozenset(
        {
            "AUTRE", "CMD_ERR", "SIRET_ERR", "CODE_ROUTAGE_ERR", "REF_CT_ABSENT", "REF_ERR", "PU_ERR", "REM_ERR",
            "QTE_ERR", "ART_ERR", "MODPAI_ERR", "QUALITE_ERR", "LIVR_INCOMP",
        }
    ),
    Status.DISPUTED: frozenset(
        {
            "AUTRE", "COORD_BANC_ERR", "TX_TVA_ERR", "MONTANTTOTAL_ERR", "CALCUL_ERR", "NON_CONFORME", "DOUBLON",
            "DEST_INC", "DEST_ERR", "TRANSAC_INC", "EMMET_INC", "CONTRAT_TERM", "DOUBLE_FACT", "CMD_ERR",
            "ADR_ERR", "SIRET_ERR", "CODE_ROUTAGE_ERR", "REF_CT_ABSENT", "REF_ERR", "PU_ERR", "REM_ERR",
            "QTE_ERR", "ART_ERR", "MODPAI_ERR", "QUALITE_ERR", "LIVR_INCOMP",
        }
    ),
    Status.SUSPENDED: frozenset(
        {"JUSTIF_ABS", "COORD_BANC_ERR", "CMD_ERR", "SIRET_ERR", "CODE_ROUTAGE_ERR", "REF_CT_ABSENT", "REF_ERR"}
    ),
    Status.REFUSED: frozenset(
        {
            "TX_TVA_ERR", "MONTANTTOTAL_ERR", "CALCUL_ERR", "NON_CONFORME", "DOUBLON", "DEST_ERR", "TRANSAC_INC",
            "EMMET_INC", "CONTRAT_TERM", "DOUBLE_FACT", "CMD_ERR", "ADR_ERR", "REF_CT_ABSENT",
        }
    ),
    Status.REJECTED: frozenset(
        {
            "MONTANTTOTAL_ERR", "CALCUL_ERR", "DOUBLON", "DEST_INC", "ADR_ERR", "REJ_SEMAN", "REJ_UNI", "REJ_COH",
            "REJ_ADR", "REJ_CONT_B2G", "REJ_REF_PJ", "REJ_ASS_PJ",
        }
    ),
    Status.ROUTING_ERROR: frozenset({"ROUTAGE_ERR"}),
    Status.INADMISSIBLE: frozenset(
        {
            "IRR_VIDE_F", "IRR_TYPE_F", "IRR_SYNTAX", "IRR_TAILLE_PJ", "IRR_NOM_PJ", "IRR_VID_PJ", "IRR_EXT_DOC",
            "IRR_TAILLE_F", "IRR_ANTIVIRUS",
        }
    ),
}  # fmt: skip
# Statuses that need a reason (official rule BR-FR-CDV-15).
REASON_REQUIRED: frozenset[Status] = frozenset(
    {
        Status.PARTIALLY_APPROVED,
        Status.DISPUTED,
        Status.SUSPENDED,
        Status.REFUSED,
        Status.REJECTED,
        Status.INADMISSIBLE,
    }
)


def allowed_reasons(status: Status) -> frozenset[str]:
    return STATUS_REASONS.get(status, REASON_CODES)


# Who may set which status through UpdateStatus. The platform sets the
# others itself (PLATFORM_STATUSES): asking for one of them is refused.
BUYER_STATUSES: frozenset[Status] = frozenset(
    {
        Status.IN_HAND,
        Status.APPROVED,
        Status.PARTIALLY_APPROVED,
        Status.DISPUTED,
        Status.SUSPENDED,
        Status.REFUSED,
        Status.PAYMENT_SENT,
        Status.REVIEWED,
        # The buyer's side says the invoice reached the wrong buyer.
        Status.ROUTING_ERROR,
    }
)
SUPPLIER_STATUSES: frozenset[Status] = frozenset(
    {Status.COMPLETED, Status.CASHED, Status.CANCELLED, *_PAYEE_NOTICES, Status.NOT_FACTORED}
)
PLATFORM_STATUSES: frozenset[Status] = frozenset(Status) - BUYER_STATUSES - SUPPLIER_STATUSES

# Equivalent Chorus Pro status (the B2G platform's own names); None where
# Chorus Pro has no counterpart we map to. See docs/lifecycle.md.
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
    Status.REVIEWED: None,
    Status.CANCELLED: None,
    Status.ROUTING_ERROR: None,
    Status.DIRECT_PAYMENT_REQUESTED: None,
    Status.FACTORED: None,
    Status.FACTORED_CONFIDENTIAL: None,
    Status.PAYMENT_ACCOUNT_CHANGED: None,
    Status.NOT_FACTORED: None,
    Status.INADMISSIBLE: None,
}

# UNCL4343 Invoice Response status codes as the Peppol Invoice Response uses
# them: AB acknowledged, IP in process, UQ under query, CA conditionally
# accepted, RE rejected, AP accepted, PD paid. The Invoice Response is the
# buyer side's answer: the supplier's own statuses have no code there.
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
    Status.REVIEWED: "IP",
    Status.CANCELLED: None,
    Status.ROUTING_ERROR: "RE",
    Status.DIRECT_PAYMENT_REQUESTED: None,
    Status.FACTORED: None,
    Status.FACTORED_CONFIDENTIAL: None,
    Status.PAYMENT_ACCOUNT_CHANGED: None,
    Status.NOT_FACTORED: None,
    Status.INADMISSIBLE: "RE",
}
