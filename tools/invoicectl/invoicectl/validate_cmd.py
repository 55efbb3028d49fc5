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
    from invoicing_validate.validation import ArtefactsMissing, Validator

    try:
        validator = Validator()
    except ArtefactsMissing as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    results: list[dict[str, Any]] = []
    for path, data in documents:
        report = validator.validate(data, filename=path.name, profile=profile)
        results.append(
            {
                "file": str(path),
                "valid": report.valid,
                "format": report.format,
                "profile": report.profile,
                "findings": [
                    {"rule": f.rule, "severity": f.severity, "location": f.location, "message": f.message}
                    for f in report.findings
                ],
            }
        )
    if as_json:
        out.print(json.dumps(results, indent=2, ensure_ascii=False))
    else:
        for r in results:
            verdict = "valid" if r["valid"] else "INVALID"
            out.print(f"{r['file']}: {verdict} ({r['format']}, {r['profile'] or 'no profile'})")
            for f in r["findings"]:
                out.print(f"  [{f['severity']}] {f['rule']}  {f['location']}  {f['message']}")
    raise typer.Exit(0 if all(r["valid"] for r in results) else 1)
