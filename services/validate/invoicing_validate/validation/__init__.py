"""Document validation engine of the validate service (pure library).

Checks an incoming e-invoice (UBL 2.1 Invoice/CreditNote, UN/CEFACT CII,
Factur-X/ZUGFeRD PDF) against the official XSDs and EN 16931 / Factur-X /
French CTC schematrons, checks French SIREN/SIRET identifiers, and extracts
the business summary. No Kafka, no database: see docs/validation.md.

Build one :class:`Validator` per process (compiling the stylesheets is
expensive) or call :func:`validate_document`, which does that lazily.
"""

from .embedded import EmbeddedFile, extract_attachments
from .engine import Validator, default_validator, validate_document
from .model import ArtefactsMissing, Finding, ShadowOutcome, Summary, ValidationReport

__all__ = [
    "ArtefactsMissing",
    "EmbeddedFile",
    "Finding",
    "ShadowOutcome",
    "Summary",
    "ValidationReport",
    "Validator",
    "default_validator",
    "extract_attachments",
    "validate_document",
]
