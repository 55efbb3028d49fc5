"""Secrets of the local stack: random, made on first use, kept under
`.run/secrets/` (mode 0700, files 0600) and never written to the repo.

Each service reads its own files through `*_FILE` settings, so a process
is handed only the secrets it needs.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path


class Secrets:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _ensure_folder(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o700)

    def path(self, name: str) -> Path:
        """The file holding secret ``name``, created with a fresh random
        value if missing."""
        path = self.folder / name
        if not path.exists():
            self._ensure_folder()
            write_private(path, secrets.token_urlsafe(24))
        return path

    def get(self, name: str) -> str:
        value = self.path(name).read_text().strip()
        # Secrets go into JAAS lines, passfiles and provisioning commands,
        # none of which quotes: a secret set by hand must stay URL-safe.
        if not value or not _SAFE.fullmatch(value):
            raise SystemExit(f"{self.folder / name}: a secret must be letters, digits, '-' and '_' only")
        return value


_SAFE = re.compile(r"[A-Za-z0-9_-]+")


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by its owner only, also when
    the file existed before with a wider mode; never through a symlink."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
