"""An invoice another platform delivered (origin_platform) skips the
seller-account check: the sending platform authenticated its seller, and
its own account here acts for no SIREN. Everything else is checked as for
any invoice."""

from __future__ import annotations

from dataclasses import dataclass, field

from invoicing.v1 import events_pb2

from invoicing_validate.domain import REJECTION_CODE, SELLER_REJECTION_CODE, SELLER_RULE, validated_event

SELLER = "732829320"  # a valid SIREN no account here acts for


@dataclass(frozen=True)
class _Summary:
    seller_ids: list[tuple[str, str]] = field(default_factory=lambda: [(SELLER, "0002")])


@dataclass(frozen=True)
class _Finding:
    rule: str
    message: str
    severity: str = "fatal"
    location: str = ""


@dataclass
class _Report:
    valid: bool = True
    format: str = "ubl-invoice"
    profile: str = ""
    findings: list[_Finding] = field(default_factory=list)
    summary: _Summary = field(default_factory=_Summary)


def _received(origin_platform: str = "", sirens: tuple[str, ...] = ()) -> events_pb2.InvoiceReceived:
    return events_pb2.InvoiceReceived(
        event_id="rcv",
        invoice=events_pb2.InvoiceRef(invoice_id="inv", origin_platform=origin_platform),
        submitter_sirens=list(sirens),
    )


def test_a_sellers_own_account_must_act_for_the_seller() -> None:
    event = validated_event(_received(sirens=("842109373",)), _Report())
    assert not event.valid and event.reason.code == SELLER_REJECTION_CODE
    assert [f.rule for f in event.findings] == [SELLER_RULE]


def test_an_invoice_delivered_by_another_platform_skips_the_seller_check() -> None:
    event = validated_event(_received(origin_platform="local"), _Report())
    assert event.valid and not event.reason.code and list(event.findings) == []
    assert event.invoice.origin_platform == "local"


def test_an_invoice_delivered_by_another_platform_still_meets_the_rules() -> None:
    report = _Report(valid=False, findings=[_Finding("BR-01", "no invoice number")])
    event = validated_event(_received(origin_platform="local"), report)
    assert not event.valid and event.reason.code == REJECTION_CODE
    assert [f.rule for f in event.findings] == ["BR-01"]
