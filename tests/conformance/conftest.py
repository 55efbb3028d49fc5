"""Fixtures for the EN 16931 conformance suite (official CEN corpus)."""

from __future__ import annotations

import pytest

from invoicing_validate.validation import Validator
from tests.validators import make_validator


@pytest.fixture(scope="session")
def validator() -> Validator:
    return make_validator()
