"""CDAR lifecycle messages of the French e-invoicing reform.

A CDAR (UN/CEFACT Cross Domain Acknowledgement and Response, D22B) is how
platforms tell each other, and the public concentrator, that an invoice
changed status: the status code (200-228, 501), its reasons, the invoice
(BT-1, BT-2, seller) and who issues and receives the status. This package
builds them (build.to_xml), reads those received from other platforms
(parse.from_xml, hardened against hostile XML) and checks them with the
official BR-FR-CDV rules of a release (validation.CdvRules). It does no
other I/O and knows nothing of the services; docs/reform.md explains where
the messages go and which release applies.

    rules = CdvRules.of(load_book().get("1.3.0"))
    data = to_xml(message)
    if rules.check(data):  # any finding: every BR-FR-CDV assert is a "warning"
        ...  # a bug: alert, never send
"""

from __future__ import annotations

from invoicing_common.schematron import FATAL, WARNING

from .build import to_xml
from .model import (
    GUIDELINE_INVOICE,
    GUIDELINE_PPF,
    PHASE_PROCESSING,
    PHASE_TRANSMISSION,
    InvoiceRef,
    LifecycleMessage,
    Party,
    Reason,
    phase_of,
)
from .parse import DEFAULT_MAX_BYTES, CdarError, from_xml
from .validation import CdvError, CdvRules, CdvRulesMissing, Finding

__all__ = [
    "DEFAULT_MAX_BYTES",
    "FATAL",
    "GUIDELINE_INVOICE",
    "GUIDELINE_PPF",
    "PHASE_PROCESSING",
    "PHASE_TRANSMISSION",
    "WARNING",
    "CdarError",
    "CdvError",
    "CdvRules",
    "CdvRulesMissing",
    "Finding",
    "InvoiceRef",
    "LifecycleMessage",
    "Party",
    "Reason",
    "from_xml",
    "phase_of",
    "to_xml",
]
