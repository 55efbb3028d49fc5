"""Entry points run inside the validation worker processes.

Kept free of Kafka and asyncio imports so a spawned worker loads only what
validation needs. Each worker builds its Validator (compiled XSLT and XSD)
once, in ``warm_up``, and reuses it for every document.
"""

from __future__ import annotations

import os

from invoicing_validate.validation import ValidationReport, default_validator, validate_document


def warm_up() -> int:
    """Compile the artefacts in this worker; returns its pid. The Factur-X
    EN16931 profile, the usual one in PDFs, is compiled too (about 2 s), so
    the first PDF does not wait for it."""
    default_validator().preload(["facturx-en16931"], ["facturx-en16931"])
    return os.getpid()


def run_checks_many(documents: list[tuple[bytes, str]]) -> list[ValidationReport]:
    """Several (document, filename) in one call: one round trip to the worker."""
    return [validate_document(document, filename=filename) for document, filename in documents]
