"""Reading the companies an invoice names, and the seller check built on it:
the same company however its identifiers are written, and no identifier
that claims to be French slips through unread."""

from __future__ import annotations

import pytest
from invoicing.v1 import common_pb2

from invoicing_common.parties import buyer, seller
from invoicing_status.domain import business_key
from invoicing_validate.domain import seller_finding

A, B = "732829320", "842109373"  # valid SIRENs
VAT_A = "FR44732829320"


def summary(
    seller_ids: list[tuple[str, str]] = (),  # type: ignore[assignment]
    seller_vat: str = "",
    buyer_ids: list[tuple[str, str]] = (),  # type: ignore[assignment]
    buyer_vat: str = "",
    endpoint: tuple[str, str] | None = None,
) -> common_pb2.InvoiceSummary:
    s = common_pb2.InvoiceSummary(seller_vat_id=seller_vat, buyer_vat_id=buyer_vat)
    for value, scheme in seller_ids:
        s.seller_ids.add(value=value, scheme=scheme)
    for value, scheme in buyer_ids:
        s.buyer_ids.add(value=value, scheme=scheme)
    if endpoint is not None:
        s.buyer_endpoint.value, s.buyer_endpoint.scheme = endpoint
    return s


@pytest.mark.parametrize(
    ("ids", "vat"),
    [
        ([(A, "0002")], ""),
        ([("732 829 320", "0002")], ""),
        ([("732 829 320 00074", "0009")], ""),
        ([], VAT_A),
        ([], "FR-44-732829320"),
        ([], "fr 44 732 829 320"),
    ],
)
def test_one_company_however_it_is_written(ids: list[tuple[str, str]], vat: str) -> None:
    found = seller(summary(ids, vat))
    assert found.sirens == {A} and found.unreadable == ()


def test_the_buyer_is_read_from_its_ids_vat_number_and_address() -> None:
    found = buyer(summary(buyer_ids=[("51234567900017", "0009")], endpoint=(f"{A}_ROUTING", "0225")))
    assert found.sirens == {"512345679", A}


@pytest.mark.parametrize(("ids", "vat"), [([("732829321", "0002")], ""), ([], "FR00732829320"), ([], "FR-xx")])
def test_a_french_identifier_that_is_not_valid_is_unreadable_not_ignored(ids: list[tuple[str, str]], vat: str) -> None:
    assert seller(summary(ids, vat)).unreadable


def test_identifiers_of_other_schemes_are_neither_companies_nor_unreadable() -> None:
    found = seller(summary([("5790000435975", "0088"), ("123456789", "0060")], "DE123456789"))
    assert found.sirens == frozenset() and found.unreadable == ()


def test_the_seller_check_refuses_another_company_hidden_anywhere() -> None:
    mine = (A,)
    assert seller_finding(summary([(A, "0002")], VAT_A), mine) is None
    # B's VAT number beside A's SIREN, with separators the parser must see through.
    hidden = seller_finding(summary([(A, "0002")], "FR-88-842109373"), mine)
    assert hidden is not None and B in hidden.message
    # An unreadable French VAT number could be anyone's.
    unreadable = seller_finding(summary([(A, "0002")], "FR-00-842109373"), mine)
    assert unreadable is not None and "not a valid French" in unreadable.message
    # No French identifier at all.
    foreign = seller_finding(summary([("5790000435975", "0088")]), mine)
    assert foreign is not None and "no French company identifier" in foreign.message
    assert foreign.rule == "SELLER-ACCOUNT" and foreign.severity == common_pb2.SEVERITY_FATAL


def test_the_duplicate_rule_keys_on_the_checked_siren_not_on_other_identifiers() -> None:
    # Two invoices with the same number from the same company, one naming a
    # GLN first: the same key. Another company with the same GLN: another key.
    gln = ("5790000435975", "0088")
    key = business_key(frozenset({A}), [gln, (A, "0002")], VAT_A, "A", "F-1", "2026-01-02", "380")
    assert key == business_key(frozenset({A}), [(A, "0002")], "", "A", "F-1", "2026-05-01", "380")
    assert key != business_key(frozenset({B}), [gln, (B, "0002")], "", "B", "F-1", "2026-01-02", "380")
    assert key is not None and key.startswith(f"siren:{A}|")
