"""Which failed documents are inadmissible (501) rather than rejected (213).

Inadmissible: the platform could not process the document as an invoice
at all: it is empty, is not an invoice format it takes, cannot be read, is
too large, or the platform failed on it. The reason is one of the official
IRR_* codes. Rejected: the document was read, and the rules (XSD,
schematron, identifiers, the seller check) refused it.

The engine reports the first kind as findings of rule FORMAT or PARSE (or
INTERNAL when it broke, SCHEMATRON when Saxon could not run the rules),
the supervisor as VALIDATION-CRASH or VALIDATION-TIME-LIMIT. Which IRR_* code fits is read from the finding's
message: tests/unit/test_validate_admissibility.py runs the engine on each
case, so a reworded message fails there rather than in production.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

# The official reason codes of status 501 this platform uses.
EMPTY_FILE = "IRR_VIDE_F"
FILE_TYPE = "IRR_TYPE_F"
SYNTAX = "IRR_SYNTAX"
FILE_SIZE = "IRR_TAILLE_F"

TIME_LIMIT_RULE = "VALIDATION-TIME-LIMIT"
CRASH_RULE = "VALIDATION-CRASH"
# The platform failed on the document however often it tried. The official
# list has no code for "the platform could not", and the document is the
# one thing every attempt shared: IRR_SYNTAX says its content could not be
# processed, the finding (kept beside the reason) says how.
PLATFORM_FAILURE_RULES = frozenset({TIME_LIMIT_RULE, CRASH_RULE, "INTERNAL", "SCHEMATRON"})
# What the engine says of a document it could not open as an invoice.
_UNREADABLE_RULES = frozenset({"FORMAT", "PARSE"})

# Message markers, in order; a finding that matches none takes its rule's
# default below. An empty document is told by how its message starts
# ("empty document", "empty embedded XML").
_EMPTY_PREFIX = "empty "
_BY_MESSAGE: tuple[tuple[str, str], ...] = (
    ("larger than", FILE_SIZE),  # the document or an embedded XML over the limit
    ("more than the accepted size", FILE_SIZE),  # a PDF stream that decodes too large
    ("decode to more than", FILE_SIZE),  # the PDF's invoice XMLs, all together
    ("not a readable", SYNTAX),  # a PDF that cannot be opened
    ("not well-formed", SYNTAX),
    ("could not be", SYNTAX),  # parsed, decoded
)
_BY_RULE = {"FORMAT": FILE_TYPE, "PARSE": SYNTAX}


class FindingLike(Protocol):
    @property
    def rule(self) -> str: ...
    @property
    def severity(self) -> str: ...
    @property
    def message(self) -> str: ...


def inadmissible_code(finding: FindingLike) -> str | None:
    """The IRR_* code of a fatal finding that makes its document
    inadmissible; None for a verdict of the rules."""
    if finding.rule in PLATFORM_FAILURE_RULES:
        return SYNTAX
    if finding.rule not in _UNREADABLE_RULES:
        return None
    message = finding.message.lower()
    if message.startswith(_EMPTY_PREFIX):
        return EMPTY_FILE
    for marker, code in _BY_MESSAGE:
        if marker in message:
            return code
    return _BY_RULE[finding.rule]


def inadmissibility(findings: Sequence[FindingLike]) -> tuple[str, FindingLike] | None:
    """(IRR_* code, the finding that decides it) when every fatal finding
    makes the document inadmissible. A document with a verdict of the rules
    as well was read far enough to be judged: rejected, not inadmissible."""
    fatal = [f for f in findings if f.severity != "warning"]
    if not fatal:
        return None
    codes = [inadmissible_code(f) for f in fatal]
    if any(code is None for code in codes):
        return None
    first = codes[0]
    assert first is not None
    return first, fatal[0]
