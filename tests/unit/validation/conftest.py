"""Fixtures for the validation engine unit tests."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from invoicing_validate.validation import ArtefactsMissing, Validator

REPO_ROOT = Path(__file__).resolve().parents[3]
SAMPLES = REPO_ROOT / "samples"


def make_validator() -> Validator:
    """A Validator, fetching the Maven artefacts first if they are missing."""
    try:
        return Validator()
    except ArtefactsMissing:
        script = REPO_ROOT / "scripts" / "fetch_artefacts.py"
        result = subprocess.run([sys.executable, str(script)], cwd=REPO_ROOT, check=False)
        if result.returncode != 0:
            pytest.fail(
                "validation artefacts are missing and scripts/fetch_artefacts.py failed;"
                " run it by hand (needs mvn and Maven Central)",
                pytrace=False,
            )
        return Validator()


@pytest.fixture(scope="session")
def validator() -> Validator:
    return make_validator()


@pytest.fixture(scope="session")
def blank_pdf() -> bytes:
    from pypdf import PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(595, 842)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


@pytest.fixture(scope="session")
def read_sample() -> Callable[[str], bytes]:
    """Reads a file of samples/ (the invoices the team ships)."""

    def read(name: str) -> bytes:
        return (SAMPLES / name).read_bytes()

    return read
