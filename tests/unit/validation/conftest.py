"""Fixtures for the validation engine unit tests."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest

from invoicing_validate.validation import Validator
from tests.validators import make_validator

REPO_ROOT = Path(__file__).resolve().parents[3]
SAMPLES = REPO_ROOT / "samples"


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
