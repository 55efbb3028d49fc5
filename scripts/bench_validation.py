"""Documents per second per core on the CEN EN 16931 example invoices:
our validator versus the bare official path, in the same run.

    .venv/bin/python scripts/bench_validation.py [--rounds 5] [--json FILE]

* ours: ``invoicing_validate.validation.Validator.validate`` (hardened parse,
  XSD, official schematrons with SaxonC, SVRL interpretation, French
  identifier checks, business summary);
* bare: SaxonC-HE running the same official compiled schematrons on the
  same documents, nothing else (``invoicectl.bench.baselines.BareValidator``).

Both run in this one process, on one core, round after round in turn so
that machine noise hits both alike. Each is reported per wall-clock second
and per CPU second of this process (the latter is steadier on a shared
machine). The corpus is ``<repo>/../shared/corpora/en16931`` (folders
ubl-examples, cii-examples, testfiles) or ``$EN16931_CORPUS``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from invoicectl.bench.baselines import BareValidator, stylesheets_for
from invoicing_validate.validation import Validator

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("ubl-examples", "cii-examples", "testfiles")


@dataclass(frozen=True)
class Rate:
    documents: int
    wall_seconds: float
    cpu_seconds: float

    @property
    def per_wall_second(self) -> float:
        return self.documents / self.wall_seconds

    @property
    def per_cpu_second(self) -> float:
        return self.documents / self.cpu_seconds


def corpus_dir() -> Path:
    return Path(os.environ.get("EN16931_CORPUS", ROOT.parent / "shared" / "corpora" / "en16931"))


def load(corpus: Path) -> list[tuple[Path, bytes]]:
    missing = [f for f in FOLDERS if not (corpus / f).is_dir()]
    if missing:
        raise SystemExit(f"EN 16931 corpus not found at {corpus} (missing {', '.join(missing)}); set EN16931_CORPUS")
    return [
        (p, p.read_bytes())
        for folder in FOLDERS
        for p in sorted((corpus / folder).iterdir())
        if p.suffix.lower() == ".xml"
    ]


def timed(run: Callable[[], None]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5, help="passes over the corpus per path (default 5)")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    documents = load(corpus_dir())
    validator = Validator()
    bare = BareValidator()
    plans = [stylesheets_for(data, in_pdf=False) for _, data in documents]
    # Warm-up, untimed: compile every stylesheet and check the corpus is clean.
    invalid = [p.name for p, data in documents if not validator.validate(data, filename=p.name).valid]
    for (_, data), keys in zip(documents, plans, strict=True):
        bare.run(data, keys)

    def ours() -> None:
        for path, data in documents:
            validator.validate(data, filename=path.name)

    def official() -> None:
        for (_, data), keys in zip(documents, plans, strict=True):
            bare.run(data, keys)

    totals = {"validator": [0.0, 0.0], "bare_official": [0.0, 0.0]}
    for _ in range(args.rounds):
        for name, run in (("validator", ours), ("bare_official", official)):
            wall, cpu = timed(run)
            totals[name][0] += wall
            totals[name][1] += cpu
    n = len(documents) * args.rounds
    rates = {name: Rate(n, wall, cpu) for name, (wall, cpu) in totals.items()}
    result = {
        "corpus": str(corpus_dir()),
        "documents": len(documents),
        "rounds": args.rounds,
        "not_valid": invalid,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "loadavg": os.getloadavg()},
        **{
            name: {
                **asdict(rate),
                "docs_per_s_per_core": round(rate.per_wall_second, 2),
                "docs_per_cpu_s": round(rate.per_cpu_second, 2),
            }
            for name, rate in rates.items()
        },
        "validator_over_bare": {
            "wall": round(rates["validator"].per_wall_second / rates["bare_official"].per_wall_second, 3),
            "cpu": round(rates["validator"].per_cpu_second / rates["bare_official"].per_cpu_second, 3),
        },
    }
    for name, rate in rates.items():
        print(
            f"{name:14} {rate.per_wall_second:7.1f} docs/s per core (wall)  "
            f"{rate.per_cpu_second:7.1f} docs per CPU-second  ({n} documents)"
        )
    ratio = result["validator_over_bare"]
    print(f"validator / bare official: {ratio['wall']:.3f} (wall), {ratio['cpu']:.3f} (CPU)")
    if invalid:
        print(f"warning: {len(invalid)} corpus document(s) not valid: {', '.join(invalid)}", file=sys.stderr)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
