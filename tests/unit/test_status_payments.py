"""The payment of an UpdateStatus request: required with 211 and 212,
refused with any other status, each bad field named."""

from __future__ import annotations

from datetime import date

import pytest

from invoicing_status.domain import Payment, TransitionError, check_payment

TODAY = date(2026, 12, 1)


def _check(code: int, amount: str = "", currency: str = "", paid_on: str = "") -> Payment | None:
    return check_payment(code, amount, currency, paid_on, "EUR", TODAY)


def test_a_payment_is_normalised_and_takes_the_invoice_currency() -> None:
    assert _check(211, "828", "", "2026-11-30") == Payment("828.00", "EUR", date(2026, 11, 30))
    assert _check(212, "1250.5", "CHF", "2026-12-01") == Payment("1250.50", "CHF", date(2026, 12, 1))
    # A day ahead of UTC is still today somewhere.
    assert _check(212, "1", "", "2026-12-02") is not None


def test_other_statuses_take_no_payment() -> None:
    assert _check(204) is None
    with pytest.raises(TransitionError) as refused:
        _check(204, "10.00", "", "2026-11-30")
    assert refused.value.field == "payment" and "211" in refused.value.message


@pytest.mark.parametrize(
    ("amount", "currency", "paid_on", "field", "words"),
    [
        ("", "", "", "payment", "requires a payment"),
        ("828.00", "", "", "payment", "payment.paid_on"),
        ("lots", "", "2026-11-30", "payment.amount", "not a decimal"),
        ("NaN", "", "2026-11-30", "payment.amount", "more than 0"),
        ("-5", "", "2026-11-30", "payment.amount", "more than 0"),
        ("0", "", "2026-11-30", "payment.amount", "more than 0"),
        ("1e15", "", "2026-11-30", "payment.amount", "less than 10^15"),
        ("828.001", "", "2026-11-30", "payment.amount", "2 decimals"),
        ("828.00", "eur", "2026-11-30", "payment.currency", "ISO 4217"),
        ("828.00", "", "30/11/2026", "payment.paid_on", "not a date"),
        ("828.00", "", "2026-02-30", "payment.paid_on", "not a date"),
        ("828.00", "", "2026-12-03", "payment.paid_on", "in the future"),
    ],
)
def test_a_bad_payment_names_its_field(amount: str, currency: str, paid_on: str, field: str, words: str) -> None:
    with pytest.raises(TransitionError) as refused:
        _check(211, amount, currency, paid_on)
    assert refused.value.field == field and words in refused.value.message
    assert not refused.value.precondition  # INVALID_ARGUMENT


def test_a_payment_survives_its_json_round_trip() -> None:
    payment = Payment("828.00", "EUR", date(2026, 11, 30))
    assert Payment.from_json(payment.as_json()) == payment
