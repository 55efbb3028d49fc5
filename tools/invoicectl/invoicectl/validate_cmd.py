"""`invoicectl validate`: the validate service's checks, locally, no stack."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

PROFILES = ("en16931", "fr-ctc")

out = Console(highlight=False, soft_wrap=True, markup=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def validate(
    files: Annotated[list[Path], typer.Argument(help="Documents to check (UBL, CII XML or Factur-X PDF).")],
    profile: Annotated[
        str | None, typer.Option(help="Rules to apply: en16931 or fr-ctc (default: as the document declares).")
    ] = None,
    rules_version: Annotated[
        str | None,
        typer.Option(
            "--rules-version",
            help="Apply this release of the French rules (see 'invoicectl rules list'); implies the French rules."
            " Default: the release whose window holds the invoice's issue date.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON array, one object per file.")] = False,
) -> None:
    """Validate documents locally. Exit 0: all valid; 1: any invalid; 2: usage or I/O error."""
    if profile is not None and profile not in PROFILES:
        err.print(f"[red]error:[/red] --profile must be one of {', '.join(PROFILES)}, not {profile!r}")
        raise typer.Exit(2)
    documents: list[tuple[Path, bytes]] = []
    for path in files:
        try:
            documents.append((path, path.read_bytes()))
        except OSError as exc:
            err.print(f"[red]error:[/red] cannot read {path}: {exc.strerror}")
            raise typer.Exit(2) from exc

    # Imported here: compiling the official artefacts is only worth it for
    # this command, not for every CLI start.
    from invoicing_common.rules import ReleaseConfigError, UnknownRelease
    from invoicing_validate.validation import ArtefactsMissing, Validator

    try:
        validator = Validator()
        if rules_version is not None:
            validator.releases.get(rules_version)
    except (ArtefactsMissing, ReleaseConfigError, UnknownRelease) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    results: list[dict[str, Any]] = []
    for path, data in documents:
        report = validator.validate(data, filename=path.name, profile=profile, rules_version=rules_version)
        results.append(
            {
                "file": str(path),
                "valid": report.valid,
                "format": report.format,
                "profile": report.profile,
                # The French rules release applied, and how it was chosen
                # (issue-date, in-force, requested); null without them.
                "rules_release": report.rules_release or None,
                "rules_selection": report.rules_selection or None,
                "findings": [
                    {
                        "rule": f.rule,
                        "severity": f.severity,
                        "location": f.location,
                        "message": f.message,
                        "release": f.release or None,
                    }
                    for f in report.findings
                ],
            }
        )
    if as_json:
        out.print(json.dumps(results, indent=2, ensure_ascii=False))
    else:
        for r in results:
            verdict = "valid" if r["valid"] else "INVALID"
            rules = f", BR-FR {r['rules_release']} ({r['rules_selection']})" if r["rules_release"] else ""
            out.print(f"{r['file']}: {verdict} ({r['format']}, {r['profile'] or 'no profile'}{rules})")
            for f in r["findings"]:
                out.print(f"  [{f['severity']}] {f['rule']}  {f['location']}  {f['message']}")
    raise typer.Exit(0 if all(r["valid"] for r in results) else 1)
