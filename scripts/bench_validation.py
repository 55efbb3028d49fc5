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
ubl-examples, cii-examples, testfiles) or ``$EN16931_CORPUS``; with
``--mix N``, N documents of the ``invoicectl bench`` mix instead (UBL, CII
and Factur-X PDFs: ours reads the PDF, bare gets the embedded XML).

``--stylesheets`` adds where our Saxon time goes: Saxon's parse of each
document, then each of our (rewritten) stylesheets on the documents it
runs on, in ms of CPU per call and per document of the corpus.
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
from invoicectl.bench.generator import Generator
from invoicing_validate.validation import Validator
from invoicing_validate.validation.artefacts import Artefacts
from invoicing_validate.validation.parsing import parse_xml, serialise_for_xslt
from invoicing_validate.validation.schematron import SchematronSet

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


def load_mix(count: int) -> list[tuple[Path, bytes, bytes, bool]]:
    """(name, what ours gets, what bare gets, in a PDF) for the bench mix."""
    documents = Generator("bench-validation").documents(count, 0.0)
    return [(Path(d.filename), d.data, d.xml, d.in_pdf) for d in documents]


def timed(run: Callable[[], None]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def stylesheet_costs(documents: list[tuple[str, tuple[str, ...]]], rounds: int) -> dict[str, dict[str, float]]:
    """ms of CPU per call and per corpus document: Saxon's parse of each
    document (``saxon-parse``), then each stylesheet on the documents whose
    plan runs it. ``documents``: (XML as the stylesheets get it, plan)."""
    schematrons = SchematronSet(Artefacts.locate().xslt)
    nodes = [(schematrons.parse(text), keys) for text, keys in documents]
    for node, keys in nodes:  # compiled, untimed
        for key in keys:
            schematrons.run(key, node)
    cpu: dict[str, float] = {}
    calls: dict[str, int] = {}
    for _ in range(rounds):
        started = time.process_time()
        for text, _keys in documents:
            schematrons.parse(text)
        cpu["saxon-parse"] = cpu.get("saxon-parse", 0.0) + time.process_time() - started
        calls["saxon-parse"] = calls.get("saxon-parse", 0) + len(documents)
        for node, keys in nodes:
            for key in keys:
                started = time.process_time()
                schematrons.run(key, node)
                cpu[key] = cpu.get(key, 0.0) + time.process_time() - started
                calls[key] = calls.get(key, 0) + 1
    per_document = len(documents) * rounds
    return {
        key: {
            "calls": calls[key],
            "ms_per_call": round(cpu[key] / calls[key] * 1000, 3),
            "ms_per_document": round(cpu[key] / per_document * 1000, 3),
        }
        for key in sorted(cpu, key=lambda k: -cpu[k])
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5, help="passes over the corpus per path (default 5)")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--mix", type=int, metavar="N", help="N documents of the bench mix instead of the CEN corpus")
    parser.add_argument("--stylesheets", action="store_true", help="also time Saxon's parse and each stylesheet")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    if args.mix is not None:
        documents = load_mix(args.mix)
        corpus = f"invoicectl bench mix, {args.mix} documents"
    else:
        documents = [(p, data, data, False) for p, data in load(corpus_dir())]
        corpus = str(corpus_dir())
    validator = Validator()
    bare = BareValidator()
    plans = [stylesheets_for(xml, in_pdf) for _, _, xml, in_pdf in documents]
    # Warm-up, untimed: compile every stylesheet and check the corpus is clean.
    invalid = [p.name for p, data, _, _ in documents if not validator.validate(data, filename=p.name).valid]
    for (_, _, xml, _), keys in zip(documents, plans, strict=True):
        bare.run(xml, keys)

    def ours() -> None:
        for path, data, _, _ in documents:
            validator.validate(data, filename=path.name)

    def official() -> None:
        for (_, _, xml, _), keys in zip(documents, plans, strict=True):
            bare.run(xml, keys)

    totals = {"validator": [0.0, 0.0], "bare_official": [0.0, 0.0]}
    for _ in range(args.rounds):
        for name, run in (("validator", ours), ("bare_official", official)):
            wall, cpu = timed(run)
            totals[name][0] += wall
            totals[name][1] += cpu
    n = len(documents) * args.rounds
    rates = {name: Rate(n, wall, cpu) for name, (wall, cpu) in totals.items()}
    result = {
        "corpus": corpus,
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
    if args.stylesheets:
        texts = [serialise_for_xslt(parse_xml(xml, what="document")) for _, _, xml, _ in documents]
        costs = stylesheet_costs(list(zip(texts, plans, strict=True)), args.rounds)
        result["stylesheets"] = costs
        for key, cost in costs.items():
            print(
                f"{key:22} {cost['ms_per_call']:6.3f} ms per call  "
                f"{cost['ms_per_document']:6.3f} ms per document  ({cost['calls']} calls)"
            )
    if invalid:
        print(f"warning: {len(invalid)} corpus document(s) not valid: {', '.join(invalid)}", file=sys.stderr)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
