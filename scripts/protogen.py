"""Generate (or check) the Python code for proto/invoicing/v1.

One pinned generator (grpcio-tools + mypy-protobuf from constraints.txt)
writes into libs/proto; `check` regenerates into a temporary folder and fails
when the committed code differs, so stale generated code cannot land.
"""

from __future__ import annotations

import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT_ROOT = ROOT / "libs" / "proto"
PACKAGE_DIR = Path("invoicing") / "v1"


def _generate(out: Path) -> None:
    target = out / PACKAGE_DIR
    target.mkdir(parents=True, exist_ok=True)
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))
    include = str(Path(protoc.__file__).parent / "_proto")
    bindir = Path(sys.executable).parent
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_grpc_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for pkg in (out / "invoicing", target):
        (pkg / "__init__.py").touch()
    (out / "invoicing" / "py.typed").touch()


def _generated_files(root: Path) -> set[Path]:
    return {
        p.relative_to(root) for p in (root / "invoicing").rglob("*") if p.is_file() and "__pycache__" not in p.parts
    }


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "generate"
    if command == "generate":
        shutil.rmtree(OUT_ROOT / PACKAGE_DIR, ignore_errors=True)
        _generate(OUT_ROOT)
        print(f"generated {len(_generated_files(OUT_ROOT))} files under {OUT_ROOT.relative_to(ROOT)}")
        return 0
    if command == "check":
        with tempfile.TemporaryDirectory() as tmp:
            fresh = Path(tmp)
            _generate(fresh)
            expected, actual = _generated_files(fresh), _generated_files(OUT_ROOT)
            stale = sorted(str(p) for p in expected ^ actual)
            stale += sorted(
                str(p) for p in expected & actual if not filecmp.cmp(fresh / p, OUT_ROOT / p, shallow=False)
            )
            if stale:
                print("generated code is stale; run `make proto`:", *stale, sep="\n  ")
                return 1
        print("generated code is up to date")
        return 0
    print(f"usage: {argv[0]} generate|check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
