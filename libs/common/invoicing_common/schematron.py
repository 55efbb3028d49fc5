"""What every user of the official compiled schematrons shares: where the
fetched artefacts are, the process's SaxonC processor, and how a report
(SVRL) reads as findings. The validate service runs the invoice rules with
it; invoicing_common.cdar the BR-FR-CDV rules of lifecycle messages.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from lxml import etree

if TYPE_CHECKING:
    from saxonche import PySaxonProcessor

ENV_ARTEFACTS_DIR: Final = "INVOICING_VALIDATION_ARTEFACTS"

SVRL_NS: Final = "http://purl.oclc.org/dsdl/svrl"
FAILED_ASSERT: Final = f"{{{SVRL_NS}}}failed-assert"
SUCCESSFUL_REPORT: Final = f"{{{SVRL_NS}}}successful-report"
_TEXT: Final = f"{{{SVRL_NS}}}text"
FATAL: Final = "fatal"
WARNING: Final = "warning"
_WARNING_FLAGS: Final = frozenset({"warning", "warn", "information", "info"})
# An assert without an id names its rule at the start of its text, either
# bracketed ("[BR-CO-10]-...", "[BR-FR-CDV-15/MDT-113] : ...") or, in the
# BR-FR 0.1 release, bare ("BR-FR-01/BT-1 : ...").
_BRACKETED_ID = re.compile(r"^\[([A-Za-z0-9][A-Za-z0-9._/\-]*)\]")
_LEADING_ID = re.compile(r"^(BR-FR-[A-Z0-9]+(?:-[A-Z0-9]+)*)\s*(?:/|:|\u2014)")
# The skeleton's locations spell each step "*:Name[namespace-uri()='...']".
_NAMESPACED_STEP = re.compile(r"\*:([A-Za-z_][\w.\-]*)\[namespace-uri\(\)='[^']*'\]")
_OPTIMIZATION_LEVEL: Final = "http://saxon.sf.net/feature/optimizationLevel"

_processor_lock = threading.Lock()
_processor: tuple[int, PySaxonProcessor] | None = None


def artefacts_dir() -> Path:
    """The folder scripts/fetch_artefacts.py fills: $INVOICING_VALIDATION_ARTEFACTS,
    else the nearest ``.cache/artefacts`` above this package (the repository
    of an editable install), else ``./.cache/artefacts``."""
    env = os.environ.get(ENV_ARTEFACTS_DIR)
    if env:
        return Path(env)
    for parent in Path(__file__).resolve().parents:
        candidate = parent / ".cache" / "artefacts"
        if candidate.is_dir():
            return candidate
    return Path.cwd() / ".cache" / "artefacts"


def saxon_processor() -> PySaxonProcessor:
    """The process's SaxonC processor, made on first use and again after a
    fork (a GraalVM isolate does not survive one)."""
    global _processor
    with _processor_lock:
        if _processor is None or _processor[0] != os.getpid():
            from saxonche import PySaxonProcessor

            processor = PySaxonProcessor(license=False)
            # Saxon's loop lifting ("l") fails on the official BR-FR 0.1 and
            # 1.2.0 stylesheets ("Bad parent pointer in expression tree"),
            # and on their rewritten form it aborts the whole process. The
            # other optimisations stay; on the CEN rules the difference is
            # within noise (5.0-6.6 ms/document either way, 43 documents).
            processor.set_configuration_property(_OPTIMIZATION_LEVEL, "-l")
            _processor = (os.getpid(), processor)
        return _processor[1]


@dataclass(frozen=True)
class SvrlFinding:
    rule: str  # the assert's id, e.g. "BR-CO-10", "BR-FR-CDV-15_MDT-113"
    severity: str  # FATAL or WARNING, from the assert's flag
    location: str  # XPath of the node at fault
    message: str


def _severity(tag: str, flag: str | None) -> str:
    if not (flag or "").strip():
        # Factur-X schematrons leave errors unflagged and use unflagged
        # reports for "not used in this profile" notices.
        return WARNING if tag == SUCCESSFUL_REPORT else FATAL
    return WARNING if (flag or "").strip().lower() in _WARNING_FLAGS else FATAL


def svrl_findings(report: etree._Element, plain_locations: bool = False) -> list[SvrlFinding]:
    """The failed asserts and successful reports of a parsed SVRL report, in
    document order. The report echoes document values: the caller parses it
    with a hardened parser. ``plain_locations`` drops the namespace tests
    from the locations ("/A[1]/B[1]" rather than "/*:A[namespace-uri()=...][1]")."""
    found: list[SvrlFinding] = []
    for element in report.iter(FAILED_ASSERT, SUCCESSFUL_REPORT):
        text_element = element.find(_TEXT)
        text = " ".join("".join(text_element.itertext()).split()) if text_element is not None else ""
        rule = (element.get("id") or "").strip()
        if not rule:
            match = _BRACKETED_ID.match(text) or _LEADING_ID.match(text)
            rule = match.group(1) if match else "SCHEMATRON"
        location = element.get("location") or ""
        found.append(
            SvrlFinding(
                rule=rule,
                severity=_severity(str(element.tag), element.get("flag")),
                location=_NAMESPACED_STEP.sub(r"\1", location) if plain_locations else location,
                message=text,
            )
        )
    return found
