"""Where the CEN EN 16931 corpus is: ``$EN16931_CORPUS``, else
``../shared/corpora/en16931`` beside this checkout (CI's layout), else the
same beside the local repository this checkout was cloned from (a clone in
a temporary folder)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_RELATIVE = Path("shared") / "corpora" / "en16931"


def _origin_checkout() -> Path | None:
    try:
        url = subprocess.run(
            ["git", "-C", str(ROOT), "config", "--get", "remote.origin.url"],
            check=False, capture_output=True, text=True, timeout=10,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    path = Path(url.removeprefix("file://")) if url else None
    return path.resolve() if path is not None and path.is_dir() else None


def en16931_corpus() -> Path:
    configured = os.environ.get("EN16931_CORPUS")
    if configured:
        return Path(configured).resolve()
    beside = (ROOT.parent / _RELATIVE).resolve()
    if beside.is_dir():
        return beside
    origin = _origin_checkout()
    if origin is not None and (origin.parent / _RELATIVE).is_dir():
        return (origin.parent / _RELATIVE).resolve()
    return beside  # absent: the conformance tests fail and name this path
