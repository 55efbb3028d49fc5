"""docs/lifecycle.md renders the lifecycle tables: each of them must say
what lifecycle.py says (labels, who sets what, reason codes and whether a
reason is required, equivalents, transitions)."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from invoicing_status.lifecycle import (
    BUYER_STATUSES,
    CHORUS_PRO,
    FINAL,
    FRENCH_NAMES,
    OFFICIAL_CODES_NOT_PRODUCED,
    PLATFORM_STATUSES,
    REASON_CODES,
    REASON_REQUIRED,
    SUPPLIER_STATUSES,
    TRANSITIONS,
    UNCL4343,
    Status,
    allowed_reasons,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "lifecycle.md"
_CODE = re.compile(r"`([A-Z][A-Z0-9_]*)`")


@cache
def _section(title: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    assert f"\n## {title}\n" in text, f"docs/lifecycle.md has no section {title!r}"
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def _rows(title: str) -> list[list[str]]:
    """The body rows of the section's first table, cells stripped."""
    rows = []
    for line in _section(title).splitlines():
        line = line.strip()
        if line.startswith("|") and not set(line) <= set("|- "):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows[1:]  # without the header


def _codes(cell: str) -> list[Status]:
    return [Status(int(c)) for c in re.findall(r"\d{3}", cell)]


def test_statuses_table_matches_names_labels_and_parties() -> None:
    setters = {"buyer": BUYER_STATUSES, "supplier": SUPPLIER_STATUSES, "platform": PLATFORM_STATUSES}
    documented: dict[Status, tuple[str, str, str]] = {}
    for code, name, french, set_by, _when in _rows("Statuses"):
        status = Status(int(code))
        documented[status] = (name, french, set_by)
    assert documented == {s: (s.name, FRENCH_NAMES[s], next(k for k, v in setters.items() if s in v)) for s in Status}
    text = _section("Statuses")
    for other in OFFICIAL_CODES_NOT_PRODUCED:
        assert str(other) in text, other


def test_reason_table_matches_allowed_codes_and_requirement() -> None:
    documented: dict[Status, tuple[bool, frozenset[str]]] = {}
    for statuses, requirement, codes in _rows("Reason codes"):
        assert requirement in ("required", "optional"), requirement
        allowed = REASON_CODES if codes == "any code of the official list" else frozenset(_CODE.findall(codes))
        for status in _codes(statuses):
            assert status not in documented, status
            documented[status] = (requirement == "required", allowed)
    assert documented == {s: (s in REASON_REQUIRED, allowed_reasons(s)) for s in Status}


def test_the_official_reason_list_is_written_out() -> None:
    listed = _section("Reason codes").split("The official list:", 1)[1].split("\n\n", 1)[0]
    assert set(_CODE.findall(listed)) == REASON_CODES


def test_equivalents_table_matches_the_code() -> None:
    documented = {}
    for code, name, chorus, uncl in _rows("Equivalents on the public stream"):
        status = Status(int(code))
        assert name == status.name
        documented[status] = (None if chorus == "—" else chorus, None if uncl == "—" else uncl.split()[0])
    assert documented == {s: (CHORUS_PRO[s], UNCL4343[s]) for s in Status}


def test_transitions_table_matches_the_code() -> None:
    documented: dict[Status, frozenset[Status]] = {}
    final: set[Status] = set()
    for source, targets in _rows("Allowed transitions"):
        if source == "(new)":
            assert _codes(targets) == [Status.SUBMITTED]
        elif targets == "none (final)":
            final.update(_codes(source))
        else:
            (status,) = _codes(source)
            # A parenthesised note may follow the codes.
            documented[status] = frozenset(_codes(targets.split("(", 1)[0]))
    assert documented == TRANSITIONS
    assert final == FINAL
