"""French company identifiers: SIREN (ISO 6523 ICD 0002) and SIRET (0009).

The schematrons check that an identifier is present and has a scheme, not
that a French number is real; a wrong check digit would otherwise only be
found when routing fails days later.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from stdnum.exceptions import ValidationError
from stdnum.fr import siren, siret

from .model import FATAL, Finding

SCHEME_SIREN: Final = "0002"
SCHEME_SIRET: Final = "0009"


@dataclass(frozen=True)
class PartyIdentifier:
    """An identifier as found in the document, with the business term it fills."""

    bt: str  # e.g. "BT-30"
    label: str  # e.g. "seller legal registration identifier"
    value: str
    scheme: str
    location: str  # XPath of the element


# The same sellers and buyers come back invoice after invoice; python-stdnum's
# check is pure, and costs more than the lookup.
@lru_cache(maxsize=16384)
def _invalid(scheme: str, value: str) -> str | None:
    """Why ``value`` is not a valid number of ``scheme`` (0002 or 0009), or None."""
    try:
        (siren if scheme == SCHEME_SIREN else siret).validate(value)
    except ValidationError as exc:
        return str(exc)
    return None


def check_identifiers(identifiers: list[PartyIdentifier]) -> list[Finding]:
    findings: list[Finding] = []
    for ident in identifiers:
        scheme = ident.scheme.strip()
        if scheme == SCHEME_SIREN:
            rule, digits = "SIREN", 9
        elif scheme == SCHEME_SIRET:
            rule, digits = "SIRET", 14
        else:
            continue
        problem = _invalid(scheme, ident.value)
        if problem is not None:
            findings.append(
                Finding(
                    rule=rule,
                    severity=FATAL,
                    location=ident.location,
                    message=(
                        f"{ident.bt} {ident.label} '{ident.value}' (scheme {scheme}) is not a"
                        f" valid {rule}: {problem} (expected {digits} digits with a valid Luhn"
                        " check digit)"
                    ),
                )
            )
    return findings
