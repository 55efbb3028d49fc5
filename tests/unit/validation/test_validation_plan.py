"""Which rule sets a document gets (pure function, no artefacts needed)."""

from __future__ import annotations

import pytest

from invoicing_validate.validation.engine import Plan, plan_checks
from invoicing_validate.validation.formats import is_pdf
from invoicing_validate.validation.summary import iso_date_from_cii

EN = "urn:cen.eu:en16931:2017"


@pytest.mark.parametrize(
    ("fmt", "bt24", "requested", "in_pdf", "expected"),
    [
        ("ubl-invoice", EN, None, False, Plan("en16931", "ubl-invoice", ("en16931-ubl",))),
        (
            "ubl-creditnote",
            EN,
            "fr-ctc",
            False,
            Plan("fr-ctc", "ubl-creditnote", ("en16931-ubl", "fr-ctc-ubl")),
        ),
        ("cii", EN, None, False, Plan("en16931", "cii-d16b", ("en16931-cii",))),
        (
            "cii",
            EN,
            None,
            True,
            Plan("en16931", "facturx-en16931", ("en16931-cii", "facturx-en16931")),
        ),
        (
            "cii",
            "urn:factur-x.eu:1p0:minimum",
            None,
            False,
            Plan("minimum", "facturx-minimum", ("facturx-minimum",)),
        ),
        (
            "cii",
            "urn:factur-x.eu:1p0:minimum",
            "en16931",
            False,
            Plan("en16931", "cii-d16b", ("en16931-cii",)),
        ),
        (
            "cii",
            "urn:factur-x.eu:1p0:basicwl",
            "fr-ctc",
            True,
            Plan("fr-ctc", "facturx-basicwl", ("facturx-basicwl", "fr-ctc-cii")),
        ),
        (
            "cii",
            f"{EN}#compliant#urn:factur-x.eu:1p0:basic",
            None,
            True,
            Plan("basic", "facturx-basic", ("en16931-cii", "facturx-basic")),
        ),
        (
            "cii",
            f"{EN}#conformant#urn:factur-x.eu:1p0:extended",
            None,
            False,
            Plan("extended", "facturx-extended", ("facturx-extended",)),
        ),
        (
            "cii",
            f"{EN}#conformant#urn.cpro.gouv.fr:1p0:extended-ctc-fr",
            None,
            False,
            Plan(
                "extended-ctc-fr",
                "cii-d22b-extended-ctc-fr",
                ("extended-ctc-fr-cii", "fr-ctc-cii"),
            ),
        ),
        # Unknown CIUS on CII: still EN 16931 rules.
        (
            "cii",
            "urn:ferd:CrossIndustryDocument:invoice:1p0:comfort",
            None,
            False,
            Plan("en16931", "cii-d16b", ("en16931-cii",)),
        ),
    ],
)
def test_plan(fmt: str, bt24: str, requested: str | None, in_pdf: bool, expected: Plan) -> None:
    assert plan_checks(fmt, bt24, requested, in_pdf) == expected


def test_minimum_never_gets_french_rules() -> None:
    plan = plan_checks("cii", "urn:factur-x.eu:1p0:minimum", "fr-ctc", True)
    assert "fr-ctc-cii" not in plan.schematrons


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"%PDF-1.7\n", True),
        (b"junk\n%PDF-1.4\n", True),
        (b"<?xml version='1.0'?><!-- %PDF-1.4 --><a/>", False),
        (b"<a/>", False),
        (b"", False),
    ],
)
def test_is_pdf(data: bytes, expected: bool) -> None:
    assert is_pdf(data) is expected


@pytest.mark.parametrize(
    ("value", "fmt", "expected"),
    [("20250314", "102", "2025-03-14"), ("20250314", "", "2025-03-14"), ("2025-03", "610", "2025-03")],
)
def test_cii_dates(value: str, fmt: str, expected: str) -> None:
    assert iso_date_from_cii(value, fmt) == expected
