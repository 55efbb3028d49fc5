"""Who may see and move which invoice: pure rules over the caller (from its
access token) and the invoice's parties (from its summary).

An account sees an invoice it submitted, or one whose seller or buyer is a
company it acts for; an `operator` sees every invoice. Anything else is
answered exactly as an invoice that does not exist, so that ids of other
tenants' invoices cannot be probed. Buyer statuses are set by an account
with the buyer role acting for the buyer, supplier statuses by one with the
supplier role acting for the seller.
"""

from __future__ import annotations

from dataclasses import dataclass

from invoicing_common.auth.principal import ROLE_BUYER, ROLE_OPERATOR, ROLE_SUPPLIER, Principal
from invoicing_status.domain import TransitionError
from invoicing_status.lifecycle import BUYER_STATUSES, SUPPLIER_STATUSES

_BUYER_CODES = frozenset(s.value for s in BUYER_STATUSES)
_SUPPLIER_CODES = frozenset(s.value for s in SUPPLIER_STATUSES)


@dataclass(frozen=True)
class Viewer:
    """The invoices a caller may see, as the queries filter them."""

    everything: bool
    subject: str
    sirens: tuple[str, ...]

    @classmethod
    def of(cls, principal: Principal) -> Viewer:
        return cls(principal.has_role(ROLE_OPERATOR), principal.subject, tuple(sorted(principal.sirens)))


@dataclass(frozen=True)
class Parties:
    submitter: str
    seller_sirens: frozenset[str]
    buyer_sirens: frozenset[str]


def can_see(viewer: Viewer, parties: Parties) -> bool:
    if viewer.everything or (viewer.subject and parties.submitter == viewer.subject):
        return True
    mine = set(viewer.sirens)
    return bool(mine & parties.seller_sirens or mine & parties.buyer_sirens)


class NotYourPart(Exception):
    """The caller sees the invoice but this status is another party's to set."""


def _codes(codes: frozenset[int]) -> str:
    return ", ".join(str(c) for c in sorted(codes))


def acting_role(principal: Principal, parties: Parties, status_code: int) -> str:
    """The part the caller plays in setting ``status_code``: "buyer" or
    "supplier". Raises TransitionError for a status no party sets, and
    NotYourPart when the caller is not that party (or lacks its role)."""
    if status_code in _BUYER_CODES:
        part, role, theirs = "buyer", ROLE_BUYER, parties.buyer_sirens
    elif status_code in _SUPPLIER_CODES:
        part, role, theirs = "supplier", ROLE_SUPPLIER, parties.seller_sirens
    else:
        raise TransitionError(
            "status_code",
            f"status_code {status_code} is not one a party sets: the buyer sets {_codes(_BUYER_CODES)}, "
            f"the supplier {_codes(_SUPPLIER_CODES)}; the platform sets the others",
            False,
        )
    if not principal.has_role(role) or not principal.sirens & theirs:
        company = "seller" if part == "supplier" else "buyer"
        raise NotYourPart(
            f"status {status_code} is the {part}'s to set: it needs an account with the {role} role "
            f"acting for the invoice's {company}"
        )
    return part
