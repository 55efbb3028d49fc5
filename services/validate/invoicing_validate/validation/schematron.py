"""Running the official compiled schematrons (XSLT 2.0) with SaxonC-HE.

Compiling a CEN stylesheet costs about a second, running it a few
milliseconds, so each stylesheet is compiled once per process and reused.
The SVRL output is parsed back with the hardened parser: it echoes document
content.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from lxml import etree

from .model import FATAL, WARNING, Finding
from .parsing import parse_trusted_output

if TYPE_CHECKING:
    from saxonche import PySaxonProcessor

SVRL_NS: Final = "http://purl.oclc.org/dsdl/svrl"
_FAILED_ASSERT: Final = f"{{{SVRL_NS}}}failed-assert"
_SUCCESSFUL_REPORT: Final = f"{{{SVRL_NS}}}successful-report"
_TEXT: Final = f"{{{SVRL_NS}}}text"
_WARNING_FLAGS: Final = frozenset({"warning", "warn", "information", "info"})
_BRACKETED_ID = re.compile(r"^\[([A-Za-z0-9][A-Za-z0-9._\-]*)\]")

# One SaxonC processor per process: it wraps a GraalVM isolate which does
# not survive fork(), hence the pid check.
_processor_lock = threading.Lock()
_processor: tuple[int, PySaxonProcessor] | None = None


def saxon_processor() -> PySaxonProcessor:
    global _processor
    with _processor_lock:
        if _processor is None or _processor[0] != os.getpid():
            from saxonche import PySaxonProcessor

            _processor = (os.getpid(), PySaxonProcessor(license=False))
        return _processor[1]


class SchematronError(RuntimeError):
    """Saxon failed to run a stylesheet (not a rule failure)."""


def _severity(element_tag: str, flag: str | None) -> str:
    if flag is None or not flag.strip():
        # Factur-X schematrons leave errors unflagged and use unflagged
        # reports for "not used in this profile" notices.
        return WARNING if element_tag == _SUCCESSFUL_REPORT else FATAL
    return WARNING if flag.strip().lower() in _WARNING_FLAGS else FATAL


def svrl_findings(svrl: str) -> list[Finding]:
    """Findings of an SVRL report, in document order."""
    root = parse_trusted_output(svrl)
    findings: list[Finding] = []
    for el in root.iter(_FAILED_ASSERT, _SUCCESSFUL_REPORT):
        text_el = el.find(_TEXT)
        text = " ".join("".join(text_el.itertext()).split()) if text_el is not None else ""
        rule = (el.get("id") or "").strip()
        if not rule:
            match = _BRACKETED_ID.match(text)
            rule = match.group(1) if match else "SCHEMATRON"
        findings.append(
            Finding(
                rule=rule,
                severity=_severity(str(el.tag), el.get("flag")),
                location=el.get("location") or "",
                message=text,
            )
        )
    return findings


class SchematronSet:
    def __init__(self, paths: dict[str, Path]) -> None:
        self._paths = paths
        self._executables: dict[str, Any] = {}
        # SaxonC objects are not documented as thread-safe; one Validator is
        # shared by the threads of a process, so calls are serialised.
        self._lock = threading.RLock()

    def _executable(self, key: str) -> Any:
        executable = self._executables.get(key)
        if executable is None:
            compiler = saxon_processor().new_xslt30_processor()
            # Compiled from the file so relative document() calls (the
            # Factur-X code lists) resolve next to the stylesheet.
            executable = compiler.compile_stylesheet(stylesheet_file=str(self._paths[key]))
            if executable is None:
                raise SchematronError(f"could not compile {self._paths[key]}")
            self._executables[key] = executable
        return executable

    def preload(self, keys: list[str] | None = None) -> None:
        with self._lock:
            for key in keys or list(self._paths):
                self._executable(key)

    def parse(self, xml_text: str) -> Any:
        """Build the Saxon tree once so several stylesheets can share it."""
        with self._lock:
            try:
                return saxon_processor().parse_xml(xml_text=xml_text)
            except Exception as exc:
                raise SchematronError(f"Saxon could not parse the document: {exc}") from exc

    def run(self, key: str, node: Any) -> list[Finding]:
        with self._lock:
            try:
                svrl = self._executable(key).transform_to_string(xdm_node=node)
            except SchematronError:
                raise
            except Exception as exc:
                raise SchematronError(f"{self._paths[key].name}: {exc}") from exc
        if not svrl:
            raise SchematronError(f"{self._paths[key].name} produced no SVRL output")
        try:
            return svrl_findings(svrl)
        except etree.LxmlError as exc:
            # E.g. a report echoing a value past libxml2's text node limit.
            raise SchematronError(f"{self._paths[key].name}: unreadable SVRL: {exc}") from exc
