"""Which French companies (SIRENs) an invoice names as seller and buyer.

An account acts for SIRENs (its access token says which); these functions
are how every service reads the same parties out of an invoice summary:
validate to check that the seller is the submitting account's, status to
decide who may see and move an invoice. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

from invoicing.v1 import common_pb2
from stdnum.fr import siren as fr_siren
from stdnum.fr import siret as fr_siret
from stdnum.fr import tva as fr_tva

SCHEME_SIREN = "0002"
SCHEME_SIRET = "0009"
# French e-invoicing address: SIREN, SIREN_SIRET, SIREN_SIRET_ROUTINGCODE or SIREN_SUFFIX.
SCHEME_ADDRESS = "0225"


def _siren_of(value: str, scheme: str) -> str | None:
    value = value.strip()
    if scheme == SCHEME_SIREN:
        return value if fr_siren.is_valid(value) else None
    if scheme == SCHEME_SIRET:
        return value[:9] if fr_siret.is_valid(value) else None
    if scheme == SCHEME_ADDRESS:
        head = value.split("_", 1)[0]
        return head if fr_siren.is_valid(head) else None
    return None


def _siren_of_vat(vat_id: str) -> str | None:
    """The SIREN inside a French VAT number (FR + 2-character key + SIREN)."""
    compact = vat_id.strip().upper().replace(" ", "")
    if not compact.startswith("FR") or not fr_tva.is_valid(compact):
        return None
    candidate = compact[4:]
    return candidate if fr_siren.is_valid(candidate) else None


def sirens(
    ids: Iterable[common_pb2.PartyIdentifier], vat_id: str, endpoint: common_pb2.PartyIdentifier | None = None
) -> frozenset[str]:
    """Every valid SIREN found in a party's identifiers (SIREN, SIRET,
    French address), its VAT number and its electronic address."""
    found = {_siren_of(i.value, i.scheme) for i in ids}
    found.add(_siren_of_vat(vat_id))
    if endpoint is not None and endpoint.value:
        found.add(_siren_of(endpoint.value, endpoint.scheme))
    return frozenset(s for s in found if s is not None)


def seller_sirens(summary: common_pb2.InvoiceSummary) -> frozenset[str]:
    """BT-29 / BT-30 identifiers and the BT-31 VAT number."""
    return sirens(summary.seller_ids, summary.seller_vat_id)


def buyer_sirens(summary: common_pb2.InvoiceSummary) -> frozenset[str]:
    """BT-46 / BT-47 identifiers, the BT-48 VAT number and the BT-49 address."""
    endpoint = summary.buyer_endpoint if summary.HasField("buyer_endpoint") else None
    return sirens(summary.buyer_ids, summary.buyer_vat_id, endpoint)
