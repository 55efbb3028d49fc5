"""The lifecycle tables against the official CDAR rules (BR-FR-CDV 1.3.0, as
compiled to XSLT in the artefacts cache): status codes (closed list CL-06),
reason codes (CL-09, and its per-status lists) and the statuses that need a
reason (rule 15). A new release that moves any of them fails here."""

from __future__ import annotations

import re
from functools import cache

import pytest
from lxml import etree

from invoicing_common.schematron import artefacts_dir
from invoicing_route.domain import REJ_ADR, REJ_CONT_B2G
from invoicing_status.lifecycle import (
    OFFICIAL_CODES_NOT_PRODUCED,
    REASON_CODES,
    REASON_REQUIRED,
    STATUS_REASONS,
    Status,
    allowed_reasons,
)
from invoicing_validate import admissibility
from invoicing_validate.domain import REJECTION_CODE, SELLER_REJECTION_CODE

RELEASE = "1.3.0"
XSL = "{http://www.w3.org/1999/XSL/Transform}"
# The per-status assertion names its status as "ProcessConditionCode != 'NNN'"
# and lists its codes as "(.) = 'CODE'".
_PER_STATUS = re.compile(r"^\(\.\./\.\./ram:ProcessConditionCode != '(\d{3})'")
_LISTED_CODE = re.compile(r"\(\.\) = '([A-Z][A-Z0-9_]*)'")
_REASON_REQUIRED_TAIL = "../ram:SpecifiedDocumentStatus/ram:ReasonCode"


@cache
def _stylesheet() -> etree._Element:
    folder = artefacts_dir() / "br-fr" / RELEASE / "xslt"
    found = sorted(folder.glob(f"*BR-FR-CDV-Schematron-CDAR_V{RELEASE}.xslt"))
    assert found, f"no CDAR stylesheet under {folder}: run scripts/fetch_artefacts.py"
    # Our own download, but parsed as any XML from outside is.
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
    return etree.parse(str(found[-1]), parser).getroot()


def _list_variable(name: str) -> set[str]:
    for variable in _stylesheet().iter(f"{XSL}variable"):
        if variable.get("name") == name:
            select = variable.get("select", "")
            return set(select.strip("'").split())
    raise AssertionError(f"the stylesheet has no variable {name}")


def _tests() -> list[str]:
    return [" ".join(w.get("test", "").split()) for w in _stylesheet().iter(f"{XSL}when")]


def official_statuses() -> set[int]:
    return {int(code) for code in _list_variable("custom:invoice-status-codes")}


def official_reasons() -> set[str]:
    return _list_variable("custom:status-reason-codes")


def official_reasons_by_status() -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for test in _tests():
        match = _PER_STATUS.match(test)
        if match:
            out[int(match.group(1))] = set(_LISTED_CODE.findall(test))
    return out


def official_reason_required() -> set[int]:
    (test,) = [t for t in _tests() if t.endswith(f"and {_REASON_REQUIRED_TAIL})")]
    return {int(code) for code in re.findall(r"\(\.\) = '(\d{3})'", test)}


def test_the_stylesheet_is_read() -> None:
    # Guards the parsing itself: the tests below would pass on empty sets.
    assert {200, 213, 501} <= official_statuses()
    assert {"REJ_SEMAN", "IRR_SYNTAX"} <= official_reasons()
    assert {200, 206, 207, 208, 210, 213, 221, 501} <= set(official_reasons_by_status())
    assert official_reason_required()


def test_every_status_we_keep_is_an_official_one() -> None:
    ours = {s.value for s in Status}
    assert ours <= official_statuses()
    # Every official code is either kept or named as one we never produce.
    assert ours | OFFICIAL_CODES_NOT_PRODUCED == official_statuses()
    assert not ours & OFFICIAL_CODES_NOT_PRODUCED


def test_every_reason_code_we_allow_is_an_official_one() -> None:
    assert official_reasons() == REASON_CODES
    for status in Status:
        assert allowed_reasons(status) <= official_reasons(), status


def test_per_status_reason_lists_are_the_official_ones() -> None:
    official = official_reasons_by_status()
    assert {s.value: set(codes) for s, codes in STATUS_REASONS.items()} == official
    # A status the rules give no list of its own takes any official code.
    for status in Status:
        if status.value not in official:
            assert allowed_reasons(status) == REASON_CODES, status


def test_the_statuses_that_need_a_reason_are_the_official_ones() -> None:
    assert {s.value for s in REASON_REQUIRED} == official_reason_required()


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (Status.REJECTED, REJECTION_CODE),
        (Status.REJECTED, SELLER_REJECTION_CODE),
        (Status.REJECTED, REJ_ADR),
        (Status.REJECTED, REJ_CONT_B2G),
        (Status.REJECTED, "REJ_UNI"),  # the status service's duplicate rule
        (Status.INADMISSIBLE, admissibility.EMPTY_FILE),
        (Status.INADMISSIBLE, admissibility.FILE_TYPE),
        (Status.INADMISSIBLE, admissibility.SYNTAX),
        (Status.INADMISSIBLE, admissibility.FILE_SIZE),
    ],
)
def test_the_pipeline_gives_only_reasons_the_official_rules_allow(status: Status, code: str) -> None:
    assert code in official_reasons_by_status()[status.value]
