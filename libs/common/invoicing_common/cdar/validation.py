"""Checking CDAR messages with the official BR-FR-CDV rules (compiled
schematron, XSLT 2.0) run by SaxonC-HE.

Every assert of the BR-FR-CDV releases published so far (1.2.0, 1.3.0) is
flagged "warning", so Finding.severity is "warning" for all of them: a
sender that must never let an invalid message out refuses on any finding,
not only on fatal ones.

The stylesheet is compiled once, when a CdvRules is made (well under a
second); a check then costs a couple of milliseconds, most of it in the
stylesheet's walks of the (small) message. The bytes are first parsed by
the hardened parser of parse.py, so Saxon never sees a DTD or an entity,
and are handed to Saxon re-serialised from that tree.

Threads: a CdvRules may be shared by the threads of a process. SaxonC
objects are not documented as thread-safe, so every Saxon call of this
module holds one module-wide lock: checks run one at a time per process,
whatever the instance. Processes: the SaxonC processor (a GraalVM isolate)
does not survive fork(), so it and the compiled stylesheets are remade in
a child process on first use.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Final

from lxml import etree

from invoicing_common.rules import RuleRelease
from invoicing_common.schematron import SvrlFinding, artefacts_dir, saxon_processor, svrl_findings

from .parse import DEFAULT_MAX_BYTES, parse_tree

# The BR-FR-CDV rules flag every assert; findings keep the flag as given.
Finding = SvrlFinding

# What findings() reads: a report with neither has nothing to parse.
_FINDING_TAGS: Final = ("failed-assert", "successful-report")

# SaxonC objects are not documented as thread-safe: this module's calls
# into the process's processor hold one lock.
_lock = threading.RLock()


class CdvRulesMissing(FileNotFoundError):
    """No BR-FR-CDV stylesheet where it was looked for."""


class CdvError(RuntimeError):
    """Saxon could not compile or run the rules (not a rule failure)."""


class CdvRules:
    """One release of the BR-FR-CDV rules, compiled."""

    def __init__(self, xslt_path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = Path(xslt_path)
        if not self.path.is_file():
            raise CdvRulesMissing(f"no BR-FR-CDV stylesheet at {self.path}")
        self._max_bytes = max_bytes
        self._compiled: tuple[int, Any] | None = None
        # Compiled now, so that a broken file fails at start-up.
        with _lock:
            self._executable()

    @classmethod
    def of(cls, release: RuleRelease, folder: Path | None = None) -> CdvRules:
        """The BR-FR-CDV rules of ``release``: the stylesheet its entry in
        the release book names (its own, or one it borrows), under the
        artefacts folder."""
        return cls((folder or artefacts_dir()) / release.file("cdar"))

    def __repr__(self) -> str:
        return f"CdvRules({self.path.name})"

    def _executable(self) -> Any:
        """The compiled stylesheet of this process; call with ``_lock`` held."""
        pid = os.getpid()
        if self._compiled is None or self._compiled[0] != pid:
            from saxonche import PySaxonApiError

            try:
                executable = saxon_processor().new_xslt30_processor().compile_stylesheet(stylesheet_file=str(self.path))
            except PySaxonApiError as exc:
                raise CdvError(f"could not compile {self.path.name}: {exc}") from exc
            if executable is None:
                raise CdvError(f"could not compile {self.path.name}")
            # The report is read by a program: indenting it is wasted work.
            executable.set_property("!indent", "no")
            self._compiled = (pid, executable)
        return self._compiled[1]

    def check(self, data: bytes) -> list[Finding]:
        """The failed asserts (and reports) of the rules on ``data``, in
        document order; [] when the message passes every rule.

        Raises CdarError when ``data`` is not safe, well-formed XML, and
        CdvError when Saxon fails."""
        text = etree.tostring(parse_tree(data, self._max_bytes), encoding="unicode")
        with _lock:
            from saxonche import PySaxonApiError

            try:
                node = saxon_processor().parse_xml(xml_text=text)
                svrl = self._executable().transform_to_string(xdm_node=node)
            except PySaxonApiError as exc:
                raise CdvError(f"{self.path.name}: {exc}") from exc
        if svrl is None:
            raise CdvError(f"{self.path.name} produced no report")
        # Most messages pass: a substring test spares parsing the report.
        if not any(tag in svrl for tag in _FINDING_TAGS):
            return []
        # The report echoes message values: parsed with the same care as input.
        parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
        report = etree.fromstring(svrl.encode("utf-8"), parser)
        return svrl_findings(report, plain_locations=True)
