"""Which French companies (SIRENs) an invoice names as seller and buyer.

An account acts for SIRENs (its access token says which); these functions
are how every service reads the same parties out of an invoice summary:
validate to check that the seller is the submitting account's, status to
decide who may see and move an invoice. Pure: no I/O.

Values are compared in their compact form: "732 829 320" and "732829320"
are the same company. An identifier that claims to be French (scheme 0002
or 0009, a VAT number starting FR) but is not valid is reported as
unreadable rather than ignored, so that it cannot hide a company from the
seller check.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from invoicing.v1 import common_pb2
from stdnum.fr import siren as fr_siren
from stdnum.fr import siret as fr_siret
from stdnum.fr import tva as fr_tva

SCHEME_SIREN = "0002"
SCHEME_SIRET = "0009"
# French e-invoicing address: SIREN, SIREN_SIRET, SIREN_SIRET_ROUTINGCODE or SIREN_SUFFIX.
SCHEME_ADDRESS = "0225"


@dataclass(frozen=True)
class Party:
    sirens: frozenset[str]
    # French identifiers that are not valid: as written in the invoice.
    unreadable: tuple[str, ...] = ()


# Every event of an invoice reads its parties again (status reads each one
# several times), and the same companies come back invoice after invoice:
# python-stdnum's checks were a tenth of status's event loop at 58 invoices/s
# (docs/performance-history.md). Pure functions of two strings, so cached.
@lru_cache(maxsize=16384)
def _siren_of(value: str, scheme: str) -> str | None:
    """The SIREN an identifier names; "" when it claims to be French and is
    not valid; None when it is of another scheme."""
    if scheme == SCHEME_SIREN:
        compact = fr_siren.compact(value)
        return compact if fr_siren.is_valid(compact) else ""
    if scheme == SCHEME_SIRET:
        compact = fr_siret.compact(value)
        return compact[:9] if fr_siret.is_valid(compact) else ""
    if scheme == SCHEME_ADDRESS:
        head = fr_siren.compact(value.split("_", 1)[0])
        return head if fr_siren.is_valid(head) else ""
    return None


@lru_cache(maxsize=16384)
def _siren_of_vat(vat_id: str) -> str | None:
    """The SIREN inside a French VAT number (FR + 2-character key + SIREN);
    "" when it starts with FR and is not valid; None for another country."""
    raw = vat_id.strip().upper()
    if not raw.startswith("FR"):
        return None
    if not fr_tva.is_valid(raw):
        return ""
    candidate = fr_tva.compact(raw)[2:]  # compact drops "FR" and separators
    return candidate if fr_siren.is_valid(candidate) else ""


def party(
    ids: Iterable[common_pb2.PartyIdentifier], vat_id: str, endpoint: common_pb2.PartyIdentifier | None = None
) -> Party:
    """Every SIREN found in a party's identifiers (SIREN, SIRET, French
    address), its VAT number and its electronic address, and the French
    identifiers among them that are not valid."""
    found: set[str] = set()
    unreadable: list[str] = []

    def add(siren: str | None, written: str) -> None:
        if siren:
            found.add(siren)
        elif siren == "":
            unreadable.append(written)

    for identifier in ids:
        add(_siren_of(identifier.value, identifier.scheme), identifier.value)
    if vat_id:
        add(_siren_of_vat(vat_id), vat_id)
    if endpoint is not None and endpoint.value:
        add(_siren_of(endpoint.value, endpoint.scheme), endpoint.value)
    return Party(frozenset(found), tuple(unreadable))


def seller(summary: common_pb2.InvoiceSummary) -> Party:
    """BT-29 / BT-30 identifiers and the BT-31 VAT number."""
    return party(summary.seller_ids, summary.seller_vat_id)


def buyer(summary: common_pb2.InvoiceSummary) -> Party:
    """BT-46 / BT-47 identifiers, the BT-48 VAT number and the BT-49 address."""
    endpoint = summary.buyer_endpoint if summary.HasField("buyer_endpoint") else None
    return party(summary.buyer_ids, summary.buyer_vat_id, endpoint)


def seller_sirens(summary: common_pb2.InvoiceSummary) -> frozenset[str]:
    return seller(summary).sirens


def buyer_sirens(summary: common_pb2.InvoiceSummary) -> frozenset[str]:
    return buyer(summary).sirens
