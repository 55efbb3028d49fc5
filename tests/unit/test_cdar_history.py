"""The CDAR message of a history row (what `invoicectl cdar` prints and a
platform sends): issuer and recipient follow from who set the status, and
every message of every lifecycle status passes the official BR-FR-CDV
rules of each release that has them."""

from __future__ import annotations

import datetime as dt

import pytest
from invoicing.v1 import common_pb2

from invoicing_common.cdar import CdvRules, from_xml, to_xml
from invoicing_common.cdar.history import NotExpressible, lifecycle_message, message_id
from invoicing_common.rules import load_book

SELLER, BUYER = "842109373", "552081317"
# A reason each status's official list allows, where one is required.
REASONS = {206: "QTE_ERR", 207: "TX_TVA_ERR", 208: "JUSTIF_ABS", 210: "DOUBLON", 213: "REJ_SEMAN", 501: "IRR_SYNTAX"}
BY_BUYER = (204, 205, 206, 207, 208, 210, 211, 214, 221)
BY_SUPPLIER = (209, 212, 220, 224, 225, 226, 227, 228)
BY_PLATFORM = (200, 201, 202, 203, 213, 501)


def _summary() -> common_pb2.InvoiceSummary:
    summary = common_pb2.InvoiceSummary(
        invoice_number="FA-2026-0042", issue_date="2026-03-16", type_code="380", currency="EUR",
        seller_name="Atelier Lumière SAS", buyer_name="Client SA",
    )  # fmt: skip
    summary.seller_ids.add(value=SELLER, scheme="0002")
    summary.buyer_ids.add(value=f"{BUYER}00012", scheme="0009")
    return summary


def _change(status: int) -> common_pb2.StatusChange:
    actor = "buyer:u1" if status in BY_BUYER else "supplier:u2" if status in BY_SUPPLIER else "validate"
    change = common_pb2.StatusChange(status_code=status, actor=actor)
    change.at.FromDatetime(dt.datetime(2026, 3, 20, 10, 0, tzinfo=dt.UTC))
    if status in REASONS:
        change.reason.code, change.reason.text = REASONS[status], "motif"
    if status in (211, 212):
        change.payment.amount, change.payment.paid_on = "1250.00", "2026-04-01"
    return change


@pytest.fixture(scope="module")
def rules() -> dict[str, CdvRules]:
    book = load_book()
    return {r.version: CdvRules.of(r) for r in book.releases}


@pytest.mark.parametrize("status", [*BY_PLATFORM, *BY_BUYER, *BY_SUPPLIER])
def test_every_status_of_a_history_gives_a_message_the_official_rules_accept(
    rules: dict[str, CdvRules], status: int
) -> None:
    message = lifecycle_message("inv-1", _summary(), _change(status), 3, "0042")
    data = to_xml(message)
    for version, cdv in rules.items():
        assert cdv.check(data) == [], (version, status)
    assert from_xml(data) == message


def test_issuer_and_recipient_follow_who_set_the_status() -> None:
    def roles(status: int) -> tuple[str, str | None, str, str | None]:
        m = lifecycle_message("inv-1", _summary(), _change(status), 0, "0042")
        [recipient] = m.recipients
        return m.issuer.role, m.issuer.global_id, recipient.role, recipient.global_id

    assert roles(207) == ("BY", BUYER, "SE", SELLER)
    assert roles(212) == ("SE", SELLER, "BY", BUYER)
    assert roles(203) == ("WK", None, "SE", SELLER)


def test_the_amount_cashed_travels_with_212_in_the_invoice_currency() -> None:
    m = lifecycle_message("inv-1", _summary(), _change(212), 0, "0042")
    assert (str(m.amount), m.currency) == ("1250.00", "EUR")


def test_the_message_id_is_stable_per_history_row() -> None:
    assert message_id("inv-1", 2, 207) == message_id("inv-1", 2, 207) != message_id("inv-1", 3, 207)


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("invoice_number", "", "BT-1"),
        ("issue_date", "", "BT-2"),
    ],
)
def test_an_unreadable_invoice_has_no_message(field: str, value: str, named: str) -> None:
    summary = _summary()
    setattr(summary, field, value)
    with pytest.raises(NotExpressible, match=named):
        lifecycle_message("inv-1", summary, _change(203), 0, "0042")


def test_a_seller_without_siren_has_no_message() -> None:
    summary = _summary()
    del summary.seller_ids[:]
    with pytest.raises(NotExpressible, match="seller"):
        lifecycle_message("inv-1", summary, _change(203), 0, "0042")
