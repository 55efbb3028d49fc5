"""The Validator for tests, fetching the Maven artefacts first if needed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from invoicing_validate.validation import ArtefactsMissing, Validator
from tests.support import ROOT


def make_validator() -> Validator:
    try:
        return Validator()
    except ArtefactsMissing:
        script = ROOT / "scripts" / "fetch_artefacts.py"
        result = subprocess.run([sys.executable, str(script)], cwd=ROOT, check=False)
        if result.returncode != 0:
            pytest.fail(
                "validation artefacts are missing and scripts/fetch_artefacts.py failed;"
                " run it by hand (needs mvn and Maven Central)",
                pytrace=False,
            )
        return Validator()
