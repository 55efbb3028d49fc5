"""Bench documents: distinct, routable with the seed directory, valid as planned."""

from __future__ import annotations

import random

import pytest
from stdnum.fr import siren

from invoicectl.bench.generator import Generator, Kind, mix, plan_kinds, seller_pool
from invoicing_validate.validation import Validator

SEED_BUYER_IDS = {("51234567900017", "0009")}
SEED_BUYER_ENDPOINT = ("512345679", "0225")


@pytest.fixture(scope="module")
def validator() -> Validator:
    return Validator()


def test_plan_mixes_formats_and_places_the_invalid_share() -> None:
    plan = plan_kinds(100, 0.1, random.Random(3))
    assert sum(not valid for _, valid in plan) == 10
    assert {kind for kind, valid in plan if valid} == set(Kind)
    with pytest.raises(ValueError, match="between 0 and 1"):
        plan_kinds(10, 1.5, random.Random(3))


def test_sellers_are_distinct_with_valid_siren() -> None:
    sellers = seller_pool(40, random.Random(5))
    assert len({s.siren for s in sellers}) == len({s.name for s in sellers}) == 40
    assert all(siren.is_valid(s.siren) for s in sellers)
    assert all(s.vat_id.startswith("FR") and s.vat_id.endswith(s.siren) for s in sellers)


def test_documents_are_distinct_and_numbered_per_run() -> None:
    documents = list(Generator("run1").documents(30, 0.2))
    assert len({d.data for d in documents}) == 30
    assert len({d.invoice_number for d in documents}) == 30
    assert all(d.invoice_number.startswith("BENCH-run1-") for d in documents)
    counts = mix(documents)
    assert counts["invalid"] == 6
    assert sum(counts[k.value] for k in Kind) == 30
    assert all(counts[k.value] >= 8 for k in Kind)
    other = next(Generator("run2").documents(1, 0.0))
    assert other.invoice_number != documents[0].invoice_number


def test_generated_documents_validate_as_planned(validator: Validator) -> None:
    generator = Generator("check", seed=7)
    for index, kind in enumerate([*Kind, Kind.UBL]):
        expect_valid = index < len(Kind)
        document = generator.document(index, kind, expect_valid)
        report = validator.validate(document.data, filename=document.filename)
        assert report.valid is expect_valid, [f.rule for f in report.findings]
        expected_format = {Kind.UBL: "ubl-invoice", Kind.CII: "cii", Kind.FACTURX: "facturx-pdf"}[kind]
        assert report.format == expected_format
        assert report.summary.invoice_number == document.invoice_number
        assert set(report.summary.buyer_ids) == SEED_BUYER_IDS
        assert report.summary.buyer_endpoint == SEED_BUYER_ENDPOINT
        if expect_valid:
            assert report.summary.seller_name == document.seller.name
            assert (document.seller.siren, "0002") in report.summary.seller_ids
        else:
            assert {"BR-CO-10", "BR-CO-13", "BR-CO-15"} <= {f.rule for f in report.findings}
