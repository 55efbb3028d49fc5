"""Findings out of an SVRL report (the output of a compiled schematron): pure."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from lxml import etree

SVRL_NS: Final = "http://purl.oclc.org/dsdl/svrl"
FATAL: Final = "fatal"
WARNING: Final = "warning"

_FAILED_ASSERT: Final = f"{{{SVRL_NS}}}failed-assert"
_SUCCESSFUL_REPORT: Final = f"{{{SVRL_NS}}}successful-report"
_TEXT: Final = f"{{{SVRL_NS}}}text"
_WARNING_FLAGS: Final = frozenset({"warning", "warn", "information", "info"})
# The rule id at the start of a message, "[BR-FR-CDV-15/MDT-113] : ...".
_BRACKETED_ID = re.compile(r"^\[([A-Za-z0-9][A-Za-z0-9._/\-]*)\]")
# The skeleton's locations spell each step "*:Name[namespace-uri()='...']".
_NAMESPACED_STEP = re.compile(r"\*:([A-Za-z_][\w.\-]*)\[namespace-uri\(\)='[^']*'\]")


@dataclass(frozen=True)
class Finding:
    rule: str  # the assert's id, e.g. "BR-FR-CDV-15_MDT-113"
    severity: str  # FATAL or WARNING, from the assert's flag
    location: str  # XPath of the node at fault, without namespaces
    message: str


def _severity(tag: str, flag: str | None) -> str:
    if not (flag or "").strip():
        # An unflagged assert is an error; an unflagged report a notice.
        return WARNING if tag == _SUCCESSFUL_REPORT else FATAL
    return WARNING if (flag or "").strip().lower() in _WARNING_FLAGS else FATAL


def findings(svrl: str) -> list[Finding]:
    """Failed asserts and successful reports, in document order."""
    # The report is Saxon's output, but it echoes document values: parse it
    # with the same care as input.
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
    root = etree.fromstring(svrl.encode("utf-8"), parser)
    found: list[Finding] = []
    for element in root.iter(_FAILED_ASSERT, _SUCCESSFUL_REPORT):
        text_element = element.find(_TEXT)
        text = " ".join("".join(text_element.itertext()).split()) if text_element is not None else ""
        rule = (element.get("id") or "").strip()
        if not rule:
            match = _BRACKETED_ID.match(text)
            rule = match.group(1) if match else "SCHEMATRON"
        found.append(
            Finding(
                rule=rule,
                severity=_severity(str(element.tag), element.get("flag")),
                location=_NAMESPACED_STEP.sub(r"\1", element.get("location") or ""),
                message=text,
            )
        )
    return found
