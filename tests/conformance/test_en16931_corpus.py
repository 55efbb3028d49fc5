"""EN 16931 conformance against the official CEN/TC 434 corpus (release 1.3.16).

The corpus lives outside the repo in ../shared/corpora/en16931 (see its
README.md; tests/corpus.py says where it is looked for). Its absence is a
failure, not a skip: a green run must mean the engine agreed with the
reference.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from invoicing_validate.validation import Validator
from tests.corpus import en16931_corpus

CORPUS = en16931_corpus()
VALID_FOLDERS = ("ubl-examples", "cii-examples", "testfiles")
UNIT_FOLDER = "unit-ubl-invoice"
MISSING = (
    f"EN 16931 corpus not found at {CORPUS}"
    " (expected ../shared/corpora/en16931 next to the repo or the repo it was cloned from,"
    " or set EN16931_CORPUS)"
)


def _valid_documents() -> list[Any]:
    files = [
        p
        for folder in VALID_FOLDERS
        if (CORPUS / folder).is_dir()
        for p in sorted((CORPUS / folder).iterdir())
        if p.suffix.lower() == ".xml"
    ]
    if not files:
        return [pytest.param(None, id="corpus-missing")]
    return [pytest.param(p, id=f"{p.parent.name}/{p.name}") for p in files]


def _unit_cases() -> list[Any]:
    manifest = CORPUS / UNIT_FOLDER / "manifest.json"
    if not manifest.is_file():
        return [pytest.param(None, id="corpus-missing")]
    cases = json.loads(manifest.read_text(encoding="utf-8"))
    return [pytest.param(case, id=case["file"]) for case in cases]


def test_corpus_is_complete() -> None:
    assert CORPUS.is_dir(), MISSING
    for folder in (*VALID_FOLDERS, UNIT_FOLDER):
        assert (CORPUS / folder).is_dir(), f"{MISSING}: {folder}/ missing"
    assert len(_valid_documents()) >= 60
    assert len(_unit_cases()) >= 900


@pytest.mark.parametrize("path", _valid_documents())
def test_official_example_is_valid(validator: Validator, path: Path | None) -> None:
    if path is None:
        pytest.fail(MISSING, pytrace=False)
    report = validator.validate(path.read_bytes(), filename=path.name)
    assert report.findings == [], [f"{f.rule}: {f.message}" for f in report.findings]
    assert report.valid
    assert report.format in ("ubl-invoice", "ubl-creditnote", "cii")
    assert report.summary.invoice_number


def _agrees(report_fatal: set[str], report_warning: set[str], case: dict[str, Any]) -> list[str]:
    fired = report_fatal | report_warning
    problems = [f"{rule} should fire (error)" for rule in case["error"] if rule not in report_fatal]
    problems += [f"{rule} should fire (warning)" for rule in case["warning"] if rule not in report_warning]
    problems += [f"{rule} should not fire" for rule in case["success"] if rule in fired]
    return problems


@pytest.mark.parametrize("case", _unit_cases())
def test_unit_case(validator: Validator, case: dict[str, Any] | None) -> None:
    if case is None:
        pytest.fail(MISSING, pytrace=False)
    report = validator.validate((CORPUS / UNIT_FOLDER / case["file"]).read_bytes())
    # Fragments are not XSD-valid on purpose, but must be recognised and
    # reach the business rules.
    assert report.format == "ubl-invoice" or report.format == "ubl-creditnote"
    assert not report.rules() & {"PARSE", "FORMAT", "SCHEMATRON", "INTERNAL"}
    problems = _agrees(report.rules("fatal"), report.rules("warning"), case)
    assert not problems, problems
