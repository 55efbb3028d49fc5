"""Routing decisions, as a table: each outcome and each reason."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import pytest
from invoicing.v1 import common_pb2, events_pb2

from invoicing_route.directory import DirectoryIndex, check_entry, check_service, is_siren
from invoicing_route.domain import REJ_ADR, REJ_CONT_B2G, BuyerIdentifiers, Level, resolve, routed_event


def siren_from(payload: str) -> str:
    return next(payload + d for d in "0123456789" if is_siren(payload + d))


BUYER = "512345679"
SIRET = "51234567900017"
OTHER_SIRET = "51234567900025"
B2G = siren_from("11000000")
B2G_COMMIT = siren_from("11000001")
GONE = siren_from("11000002")
OFF = siren_from("11000003")
FUTURE = siren_from("11000004")
TODAY = date(2026, 6, 15)


def directory() -> DirectoryIndex:
    entries = [
        check_entry(siren=BUYER, platform_id="local"),
        check_entry(siren=BUYER, siret=SIRET, platform_id="pdp-siret"),
        check_entry(siren=BUYER, siret=SIRET, routing_code="ACHATS", platform_id="pdp-code"),
        check_entry(siren=BUYER, suffix="FACT", platform_id="pdp-suffix"),
        check_entry(siren=B2G, platform_id="chorus", requires_service_code=True),
        check_entry(siren=B2G_COMMIT, platform_id="chorus", requires_commitment_number=True),
        check_entry(siren=GONE, platform_id="old", valid_to="2025-12-31"),
        check_entry(siren=OFF, platform_id="off", active=False),
        check_entry(siren=FUTURE, platform_id="soon", valid_from="2027-01-01"),
        # Same address, two periods: the one in force wins.
        check_entry(siren=FUTURE, suffix="X", platform_id="before", valid_to="2026-06-30"),
        check_entry(siren=FUTURE, suffix="X", platform_id="after", valid_from="2026-07-01"),
    ]
    services = [
        check_service(siren=B2G, code="SVC-OK"),
        check_service(siren=B2G, code="SVC-OFF", active=False),
        check_service(siren=B2G, code="SVC-EJ", requires_commitment_number=True),
    ]
    return DirectoryIndex.of(entries, services)


@dataclass(frozen=True)
class Case:
    name: str
    endpoint: tuple[str, str] | None
    ids: tuple[tuple[str, str], ...] = ()
    bt10: str = ""
    bt13: str = ""
    platform: str = ""  # routed there, or
    reason: str = ""  # rejected with this code
    level: Level | None = None
    mentions: tuple[str, ...] = ()
    day: date = TODAY


CASES = [
    Case("siren address", (BUYER, "0225"), platform="local", level=Level.SIREN),
    Case("siret address", (f"{BUYER}_{SIRET}", "0225"), platform="pdp-siret", level=Level.SIRET),
    Case("siret + routing code", (f"{BUYER}_{SIRET}_ACHATS", "0225"), platform="pdp-code",
         level=Level.SIRET_ROUTING_CODE),
    Case("unknown routing code falls back to the siret", (f"{BUYER}_{SIRET}_NOPE", "0225"), platform="pdp-siret",
         level=Level.SIRET),
    Case("siren + suffix", (f"{BUYER}_FACT", "0225"), platform="pdp-suffix", level=Level.SIREN_SUFFIX),
    Case("unknown suffix falls back to the siren", (f"{BUYER}_ZZZ", "0225"), platform="local", level=Level.SIREN),
    Case("BT-46 siret beats the BT-49 siren", (BUYER, "0225"), ids=((SIRET, "0009"),), platform="pdp-siret",
         level=Level.SIRET),
    Case("routing code from BT-49, siret from BT-46", (f"{BUYER}_FACT_ACHATS", "0225"), ids=((SIRET, "0009"),),
         platform="pdp-code", level=Level.SIRET_ROUTING_CODE),
    Case("siret without its own entry: its siren", None, ids=((OTHER_SIRET, "0009"),), platform="local",
         level=Level.SIREN),
    Case("siren identifier only", None, ids=((BUYER, "0002"),), platform="local", level=Level.SIREN),
    Case("unknown buyer", ("999999998", "0225"), reason=REJ_ADR, mentions=("BT-49", "999999998")),
    Case("no identifiers", None, reason=REJ_ADR, mentions=("BT-49", "BT-46")),
    Case("bad siren in BT-49", ("123", "0225"), reason=REJ_ADR, mentions=("BT-49", "123")),
    Case("expired entry", (GONE, "0225"), reason=REJ_ADR, mentions=(GONE,)),
    Case("expired entry, before its end", (GONE, "0225"), platform="old", day=date(2025, 12, 31), level=Level.SIREN),
    Case("inactive entry", (OFF, "0225"), reason=REJ_ADR, mentions=(OFF,)),
    Case("not yet valid", (FUTURE, "0225"), reason=REJ_ADR, mentions=(FUTURE,)),
    Case("period in force (before)", (f"{FUTURE}_X", "0225"), platform="before", level=Level.SIREN_SUFFIX),
    Case("period in force (after)", (f"{FUTURE}_X", "0225"), platform="after", level=Level.SIREN_SUFFIX,
         day=date(2026, 7, 1)),
    Case("service code known", (B2G, "0225"), bt10="SVC-OK", platform="chorus", level=Level.SIREN),
    Case("service code missing", (B2G, "0225"), reason=REJ_CONT_B2G, mentions=("BT-10",)),
    Case("service code unknown", (B2G, "0225"), bt10="NOPE", reason=REJ_CONT_B2G, mentions=("BT-10", "NOPE")),
    Case("service code inactive", (B2G, "0225"), bt10="SVC-OFF", reason=REJ_CONT_B2G,
         mentions=("BT-10", "SVC-OFF", "inactive")),
    Case("service requires a commitment", (B2G, "0225"), bt10="SVC-EJ", reason=REJ_CONT_B2G,
         mentions=("BT-13", "SVC-EJ")),
    Case("service requires a commitment, given", (B2G, "0225"), bt10="SVC-EJ", bt13="EJ-1", platform="chorus",
         level=Level.SIREN),
    Case("entry requires a commitment", (B2G_COMMIT, "0225"), reason=REJ_CONT_B2G, mentions=("BT-13",)),
    Case("entry requires a commitment, given", (B2G_COMMIT, "0225"), bt13="PO-1", platform="chorus",
         level=Level.SIREN),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_routing_table(case: Case) -> None:
    buyer = BuyerIdentifiers(
        endpoint=case.endpoint, ids=case.ids, buyer_reference=case.bt10, purchase_order_reference=case.bt13
    )
    resolution = resolve(directory(), buyer, case.day)
    if case.platform:
        assert resolution.routed, resolution
        assert resolution.destination() == case.platform
        assert resolution.level == case.level
    else:
        assert not resolution.routed
        assert resolution.reason_code == case.reason
        for text in case.mentions:
            assert text in resolution.reason_text, (text, resolution.reason_text)


def _validated(summary: common_pb2.InvoiceSummary) -> events_pb2.InvoiceValidated:
    return events_pb2.InvoiceValidated(
        invoice=events_pb2.InvoiceRef(invoice_id="i-1", received_event_id="r-1"), valid=True, summary=summary
    )


def test_routed_event_local_remote_and_rejected() -> None:
    index = directory()
    summary = common_pb2.InvoiceSummary(invoice_number="FA-1", buyer_endpoint=common_pb2.PartyIdentifier(
        value=BUYER, scheme="0225"))  # fmt: skip
    local = routed_event(_validated(summary), resolve(index, BuyerIdentifiers.from_summary(summary), TODAY), "local")
    assert local.outcome == events_pb2.ROUTING_OUTCOME_ROUTED and local.local_delivery
    assert local.destination_platform == "local" and local.directory_entry_id == BUYER
    assert local.invoice.invoice_id == "i-1" and local.summary.invoice_number == "FA-1"

    summary.buyer_ids.add(value=SIRET, scheme="0009")
    remote = routed_event(_validated(summary), resolve(index, BuyerIdentifiers.from_summary(summary), TODAY), "local")
    assert remote.outcome == events_pb2.ROUTING_OUTCOME_ROUTED and not remote.local_delivery
    assert remote.destination_platform == "pdp-siret" and remote.directory_entry_id == f"{BUYER}_{SIRET}"
    assert remote.event_id == local.event_id  # one routing decision per invoice

    summary = common_pb2.InvoiceSummary(buyer_endpoint=common_pb2.PartyIdentifier(value=B2G, scheme="0225"))
    refused = routed_event(_validated(summary), resolve(index, BuyerIdentifiers.from_summary(summary), TODAY), "x")
    assert refused.outcome == events_pb2.ROUTING_OUTCOME_REJECTED
    assert refused.reason.code == REJ_CONT_B2G and "BT-10" in refused.reason.text
    assert refused.directory_entry_id == B2G and not refused.destination_platform


def test_a_change_to_the_index_changes_the_next_decision() -> None:
    index = directory()
    buyer = BuyerIdentifiers(endpoint=(OFF, "0225"))
    assert not resolve(index, buyer, TODAY).routed
    index.put_entry(check_entry(siren=OFF, platform_id="back"))
    assert resolve(index, buyer, TODAY).destination() == "back"
    index.remove_entry(OFF, date.min)
    assert resolve(index, buyer, TODAY).reason_code == REJ_ADR
