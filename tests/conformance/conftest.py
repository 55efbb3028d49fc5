"""Fixtures for the EN 16931 conformance suite (official CEN corpus)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from invoicing_validate.validation import ArtefactsMissing, Validator

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def validator() -> Validator:
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
