"""The stylesheets as we compile them (code lists preloaded, no
``svrl:fired-rule`` output) give exactly the findings of the stylesheets as
shipped, on documents that pass and on documents that break rules."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from invoicing_validate.validation.artefacts import Artefacts
from invoicing_validate.validation.formats import classify_root
from invoicing_validate.validation.model import FORMAT_CII, FORMAT_UBL_INVOICE
from invoicing_validate.validation.parsing import parse_xml
from invoicing_validate.validation.schematron import SchematronSet, rewrite_stylesheet
from tests.corpus import en16931_corpus

ReadSample = Callable[[str], bytes]

# Each replacement swaps a code for one absent from its code list.
_BAD_CODES = [
    ("<ram:InvoiceCurrencyCode>EUR<", "<ram:InvoiceCurrencyCode>EUX<"),
    ("<ram:CountryID>FR<", "<ram:CountryID>XX<"),
    ('unitCode="C62"', 'unitCode="ZZZZ"'),
    ("<ram:CategoryCode>S<", "<ram:CategoryCode>Q<"),
]
# Rule-breaking edits of the UBL sample: totals, dates, VAT, identifiers.
_BAD_UBL = [
    ('<cbc:PayableAmount currencyID="EUR">828.00<', '<cbc:PayableAmount currencyID="EUR">829.00<'),
    ('<cbc:TaxAmount currencyID="EUR">138.00<', '<cbc:TaxAmount currencyID="EUR">13.80<'),
    ("<cbc:ID>S</cbc:ID>", "<cbc:ID>Q</cbc:ID>"),
    ("<cbc:DocumentCurrencyCode>EUR<", "<cbc:DocumentCurrencyCode>EUX<"),
]
_FACTURX = ["facturx-en16931", "facturx-basicwl", "facturx-extended", "facturx-basic", "facturx-minimum"]
_CII = ["en16931-cii", "fr-ctc-cii", "extended-ctc-fr-cii", *_FACTURX]
_UBL = ["en16931-ubl", "fr-ctc-ubl", "extended-ctc-fr-ubl"]


@pytest.fixture(scope="module")
def stylesheet_sets() -> tuple[SchematronSet, SchematronSet]:
    paths = Artefacts.locate().xslt
    return SchematronSet(paths, rewrite=True), SchematronSet(paths, rewrite=False)


def _edits(text: str, edits: list[tuple[str, str]]) -> list[str]:
    docs = [text]
    for old, new in edits:
        assert old in text, old
        docs.append(text.replace(old, new, 1))
    return docs


def _corpus(fmt: str) -> list[str]:
    """The CEN example invoices of one syntax (UBL invoices or CII)."""
    corpus = en16931_corpus()
    docs = []
    for path in sorted(Path(corpus).glob("*-examples/*.xml")) + sorted(Path(corpus).glob("testfiles/*.xml")):
        data = path.read_bytes()
        if classify_root(parse_xml(data, what="document")) == fmt:
            docs.append(data.decode("utf-8"))
    assert docs, f"no {fmt} document in {corpus}"
    return docs


def _same_findings(sets: tuple[SchematronSet, SchematronSet], key: str, docs: list[str]) -> list[int]:
    rewritten, shipped = sets
    counts = []
    for i, text in enumerate(docs):
        fast = rewritten.run(key, rewritten.parse(text))
        reference = shipped.run(key, shipped.parse(text))
        assert fast == reference, f"{key}: document {i}"
        counts.append(len(reference))
    return counts


@pytest.mark.parametrize("key", _CII)
def test_cii_stylesheets_give_the_shipped_findings(
    stylesheet_sets: tuple[SchematronSet, SchematronSet], read_sample: ReadSample, key: str
) -> None:
    docs = _edits(read_sample("cii-invoice-valid.xml").decode("utf-8"), _BAD_CODES)
    counts = _same_findings(stylesheet_sets, key, docs + _corpus(FORMAT_CII))
    assert sum(counts) > 0, "the comparison must cover reports with findings"
    if key == "facturx-en16931":
        # The bad codes are caught through the code lists: the comparison
        # covers the rewritten document() calls, not only rules around them.
        assert sum(n - counts[0] for n in counts[1 : len(docs)]) >= len(_BAD_CODES)


@pytest.mark.parametrize("key", _UBL)
def test_ubl_stylesheets_give_the_shipped_findings(
    stylesheet_sets: tuple[SchematronSet, SchematronSet], read_sample: ReadSample, key: str
) -> None:
    docs = _edits(read_sample("ubl-invoice-valid.xml").decode("utf-8"), _BAD_UBL)
    docs.append(read_sample("ubl-invoice-invalid-rules.xml").decode("utf-8"))
    counts = _same_findings(stylesheet_sets, key, docs + _corpus(FORMAT_UBL_INVOICE))
    assert sum(counts) > 0, "the comparison must cover reports with findings"


def test_every_stylesheet_loses_its_fired_rule_output_and_nothing_else() -> None:
    for key, path in Artefacts.locate().xslt.items():
        shipped = path.read_text(encoding="utf-8")
        rewritten = rewrite_stylesheet(path)
        assert rewritten.fired_rules_dropped == shipped.count("<svrl:fired-rule") > 0, key
        assert "svrl:fired-rule" not in rewritten.text, key
        assert rewritten.text.count("svrl:failed-assert") == shipped.count("svrl:failed-assert"), key
        assert rewritten.text.count("svrl:successful-report") == shipped.count("svrl:successful-report"), key


def test_every_factur_x_stylesheet_reads_its_code_list_once() -> None:
    for key in _FACTURX:
        rewritten = rewrite_stylesheet(Artefacts.locate().xslt[key])
        assert "document('" not in rewritten.text
        assert [p.name.endswith("_codedb.xml") for p in rewritten.documents.values()] == [True], key


def test_cen_stylesheets_have_no_code_list_to_preload() -> None:
    paths = Artefacts.locate().xslt
    assert rewrite_stylesheet(paths["en16931-ubl"]).documents == {}
    assert rewrite_stylesheet(paths["en16931-cii"]).documents == {}
