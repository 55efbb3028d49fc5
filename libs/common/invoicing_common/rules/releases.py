"""The official French rule releases (BR-FR) and which one applies when.

Pure data and rules: the release book is read from a TOML file (the one
shipped beside this module, or RULES_RELEASES_FILE), and picks a release
for an invoice from its issue date (BT-2). The validate service runs the
picked release's stylesheets; the status service checks its CDAR
messages with the release in force today. docs/reform.md explains how to
add a release.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

ENV_RELEASES_FILE: Final = "RULES_RELEASES_FILE"
DEFAULT_FILE: Final = Path(__file__).with_name("br-fr-releases.toml")

KINDS: Final = ("ubl", "cii", "cdar", "extended-ubl", "extended-cii")
_RELEASE_KEYS: Final = frozenset({"version", "published", "valid_from", "valid_to", "profiles", *KINDS})

# How the release of an invoice was chosen.
Selection = Literal["issue-date", "in-force", "requested", "profile"]


class ReleaseConfigError(ValueError):
    """The release book is wrong; the message names the release and field."""


class UnknownRelease(KeyError):
    """No release has this version."""

    def __init__(self, version: str, known: list[str]) -> None:
        super().__init__(version)
        self.version = version
        self.known = known

    def __str__(self) -> str:
        return f"unknown rules release {self.version!r}; known: {', '.join(self.known)}"


@dataclass(frozen=True)
class RuleRelease:
    version: str
    published: dt.date
    # None: never in force by date (shadow or explicit request only).
    valid_from: dt.date | None
    # Inclusive; None: open-ended.
    valid_to: dt.date | None
    # Kind ("ubl", "cii", "cdar", ...) -> path relative to the artefacts folder.
    files: Mapping[str, str]
    # Specification identifiers (BT-24) that name this release: an invoice
    # declaring one gets it, whatever its date.
    profiles: frozenset[str] = frozenset()

    @property
    def label(self) -> str:
        return f"BR-FR {self.version}"

    def in_force_on(self, day: dt.date) -> bool:
        if self.valid_from is None or day < self.valid_from:
            return False
        return self.valid_to is None or day <= self.valid_to

    def file(self, kind: str) -> str:
        try:
            return self.files[kind]
        except KeyError:
            raise ReleaseConfigError(f"release {self.version}: no '{kind}' file") from None


@dataclass(frozen=True)
class Choice:
    release: RuleRelease
    selection: Selection


@dataclass(frozen=True)
class ReleaseBook:
    # Ordered by publication date, oldest first.
    releases: tuple[RuleRelease, ...]

    @property
    def versions(self) -> list[str]:
        return [r.version for r in self.releases]

    def get(self, version: str) -> RuleRelease:
        for release in self.releases:
            if release.version == version:
                return release
        raise UnknownRelease(version, self.versions)

    def in_force(self, today: dt.date) -> RuleRelease:
        """The release whose window holds today; failing that the newest
        whose window has opened (a gap between windows, or all closed)."""
        for release in self.releases:
            if release.in_force_on(today):
                return release
        opened = [r for r in self.releases if r.valid_from is not None and r.valid_from <= today]
        if not opened:
            raise ReleaseConfigError(f"no rules release is in force on {today.isoformat()}")
        return max(opened, key=lambda r: (r.valid_from, r.published))

    def choose(self, issue_date: str, today: dt.date, requested: str | None = None, profile: str = "") -> Choice:
        """The release for an invoice issued on ``issue_date`` (BT-2, ISO
        ``YYYY-MM-DD``) that declares ``profile`` (BT-24). An explicit
        request wins, then a release the profile names; a date that is
        missing, unreadable or outside every window gets the release in
        force today."""
        if requested:
            return Choice(self.get(requested), "requested")
        declared = profile.strip()
        if declared:
            for release in self.releases:
                if declared in release.profiles:
                    return Choice(release, "profile")
        day = parse_day(issue_date)
        if day is not None:
            for release in self.releases:
                if release.in_force_on(day):
                    return Choice(release, "issue-date")
        return Choice(self.in_force(today), "in-force")


def parse_day(text: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(text.strip()) if text.strip() else None
    except ValueError:
        return None


def _date(entry: Mapping[str, Any], key: str, where: str) -> dt.date | None:
    value = entry.get(key)
    if value is None:
        return None
    if isinstance(value, dt.datetime) or not isinstance(value, dt.date):
        raise ReleaseConfigError(f"{where}: '{key}' must be a date (YYYY-MM-DD), not {value!r}")
    return value


def parse_book(text: str, source: str = "<text>") -> ReleaseBook:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ReleaseConfigError(f"{source}: not valid TOML: {exc}") from exc
    entries = data.get("release")
    if not isinstance(entries, list) or not entries:
        raise ReleaseConfigError(f"{source}: no [[release]] entries")
    releases: list[RuleRelease] = []
    for index, entry in enumerate(entries):
        where = f"{source}: release #{index + 1}"
        version = entry.get("version")
        if not isinstance(version, str) or not version.strip():
            raise ReleaseConfigError(f"{where}: 'version' must be a non-empty string")
        where = f"{source}: release {version}"
        unknown = sorted(set(entry) - _RELEASE_KEYS)
        if unknown:
            raise ReleaseConfigError(f"{where}: unknown field(s) {', '.join(unknown)}")
        published = _date(entry, "published", where)
        if published is None:
            raise ReleaseConfigError(f"{where}: 'published' is required")
        valid_from = _date(entry, "valid_from", where)
        valid_to = _date(entry, "valid_to", where)
        if valid_to is not None and (valid_from is None or valid_to < valid_from):
            raise ReleaseConfigError(f"{where}: 'valid_to' needs a 'valid_from' on or before it")
        profiles = entry.get("profiles", [])
        if not isinstance(profiles, list) or not all(isinstance(p, str) and p.strip() for p in profiles):
            raise ReleaseConfigError(f"{where}: 'profiles' must be a list of specification identifiers (BT-24)")
        files = {kind: entry[kind] for kind in KINDS if kind in entry}
        for kind, path in files.items():
            if not isinstance(path, str) or not path or Path(path).is_absolute() or ".." in Path(path).parts:
                raise ReleaseConfigError(f"{where}: '{kind}' must be a path inside the artefacts folder")
        for kind in ("ubl", "cii"):
            if kind not in files:
                raise ReleaseConfigError(f"{where}: '{kind}' is required")
        named = frozenset(p.strip() for p in profiles)
        releases.append(RuleRelease(version.strip(), published, valid_from, valid_to, files, named))
    seen: set[str] = set()
    naming: dict[str, str] = {}
    for release in releases:
        if release.version in seen:
            raise ReleaseConfigError(f"{source}: release {release.version} is listed twice")
        seen.add(release.version)
        for profile in release.profiles:
            if profile in naming:
                raise ReleaseConfigError(
                    f"{source}: profile {profile!r} names releases {naming[profile]} and {release.version}"
                )
            naming[profile] = release.version
    windowed = sorted((r for r in releases if r.valid_from is not None), key=lambda r: r.valid_from or dt.date.min)
    for earlier, later in itertools.pairwise(windowed):
        assert later.valid_from is not None
        if earlier.valid_to is None or earlier.valid_to >= later.valid_from:
            raise ReleaseConfigError(
                f"{source}: the windows of releases {earlier.version} and {later.version} overlap"
                " (an issue date must pick one release)"
            )
    return ReleaseBook(tuple(sorted(releases, key=lambda r: (r.published, r.version))))


def releases_file() -> Path:
    configured = os.environ.get(ENV_RELEASES_FILE, "").strip()
    return Path(configured) if configured else DEFAULT_FILE


def load_book(path: Path | None = None) -> ReleaseBook:
    source = path or releases_file()
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise ReleaseConfigError(f"{source}: cannot read the rules release book: {exc.strerror}") from exc
    return parse_book(text, str(source))
