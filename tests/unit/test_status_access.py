"""Who may set which status through UpdateStatus: the buyer's statuses by an
account with the buyer role acting for the buyer, the supplier's by one with
the supplier role acting for the seller; the statuses the platform sets
itself by nobody."""

from __future__ import annotations

import pytest

from invoicing_common.auth.principal import ROLE_BUYER, ROLE_SUPPLIER, Principal
from invoicing_status.access import NotYourPart, Parties, acting_role
from invoicing_status.domain import TransitionError
from invoicing_status.lifecycle import BUYER_STATUSES, PLATFORM_STATUSES, SUPPLIER_STATUSES, Status

SELLER, BUYER = "842109373", "512345679"
PARTIES = Parties(submitter="sub-1", seller_sirens=frozenset({SELLER}), buyer_sirens=frozenset({BUYER}))


def _account(role: str, siren: str) -> Principal:
    return Principal("sub-2", "client", frozenset({role}), frozenset({siren}), 0.0)


def test_the_platform_keeps_its_own_statuses() -> None:
    assert {s.value for s in PLATFORM_STATUSES} == {200, 201, 202, 203, 213, 501}
    assert not BUYER_STATUSES & SUPPLIER_STATUSES
    assert frozenset(Status) == BUYER_STATUSES | SUPPLIER_STATUSES | PLATFORM_STATUSES


@pytest.mark.parametrize("status", sorted(PLATFORM_STATUSES))
def test_a_status_the_platform_sets_is_refused_to_every_party(status: Status) -> None:
    both = Principal("sub-3", "client", frozenset({ROLE_BUYER, ROLE_SUPPLIER}), frozenset({SELLER, BUYER}), 0.0)
    with pytest.raises(TransitionError) as refused:
        acting_role(both, PARTIES, status.value)
    assert not refused.value.precondition and refused.value.field == "status_code"
    assert "the platform sets the others" in refused.value.message


@pytest.mark.parametrize("status", sorted(BUYER_STATUSES))
def test_buyer_statuses_are_the_buyers(status: Status) -> None:
    assert acting_role(_account(ROLE_BUYER, BUYER), PARTIES, status.value) == "buyer"
    for other in (_account(ROLE_SUPPLIER, BUYER), _account(ROLE_BUYER, SELLER)):
        with pytest.raises(NotYourPart):
            acting_role(other, PARTIES, status.value)


@pytest.mark.parametrize("status", sorted(SUPPLIER_STATUSES))
def test_supplier_statuses_are_the_suppliers(status: Status) -> None:
    assert acting_role(_account(ROLE_SUPPLIER, SELLER), PARTIES, status.value) == "supplier"
    for other in (_account(ROLE_BUYER, SELLER), _account(ROLE_SUPPLIER, BUYER)):
        with pytest.raises(NotYourPart):
            acting_role(other, PARTIES, status.value)


def test_new_statuses_go_to_the_expected_party() -> None:
    assert {Status.REVIEWED, Status.ROUTING_ERROR} <= BUYER_STATUSES
    assert {
        Status.CANCELLED,
        Status.DIRECT_PAYMENT_REQUESTED,
        Status.FACTORED,
        Status.FACTORED_CONFIDENTIAL,
        Status.PAYMENT_ACCOUNT_CHANGED,
        Status.NOT_FACTORED,
    } <= SUPPLIER_STATUSES
