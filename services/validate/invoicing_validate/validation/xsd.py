"""XML Schema validation with lxml against the official schemas.

Schemas are compiled lazily, once per key, and kept for the life of the
Validator. The instance's xsi:schemaLocation hints are never followed:
validation always uses the schema chosen from the document type.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Final

from lxml import etree

from .model import FATAL, Finding

# A broken document can produce thousands of schema errors; the first ones
# are enough to fix it and keep reports small.
MAX_XSD_FINDINGS: Final = 50


class SchemaSet:
    def __init__(self, paths: dict[str, Path]) -> None:
        self._paths = paths
        self._schemas: dict[str, etree.XMLSchema] = {}
        # Compilation and validation share libxml2 state per schema object.
        self._lock = threading.Lock()

    def _schema(self, key: str) -> etree.XMLSchema:
        schema = self._schemas.get(key)
        if schema is None:
            # The schema files are ours and trusted, but there is still no
            # reason to let them reach the network.
            parser = etree.XMLParser(no_network=True, resolve_entities=False)
            schema = etree.XMLSchema(etree.parse(str(self._paths[key]), parser))
            self._schemas[key] = schema
        return schema

    def preload(self, keys: list[str] | None = None) -> None:
        with self._lock:
            for key in keys or list(self._paths):
                self._schema(key)

    def validate(self, key: str, root: etree._Element) -> list[Finding]:
        with self._lock:
            schema = self._schema(key)
            ok = schema.validate(root)
            errors = [] if ok else list(schema.error_log)
        findings: list[Finding] = []
        for error in errors[:MAX_XSD_FINDINGS]:
            findings.append(
                Finding(
                    rule="XSD",
                    severity=FATAL,
                    location=error.path or "",
                    message=f"line {error.line}: {' '.join(error.message.split())}",
                )
            )
        if len(errors) > MAX_XSD_FINDINGS:
            findings.append(
                Finding(
                    rule="XSD",
                    severity=FATAL,
                    location="",
                    message=f"{len(errors) - MAX_XSD_FINDINGS} more schema errors not listed",
                )
            )
        return findings
