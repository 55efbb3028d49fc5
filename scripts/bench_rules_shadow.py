"""CPU per document of the French rules with and without a release in shadow.

    .venv/bin/python scripts/bench_rules_shadow.py [--shadow 0.1] [--rounds 6] [--per-round 40]

The UBL and CII samples, declared under the French CTC profile and issued
in 2026 (release 1.3.0 applies), validated by two validators in this one
process: one plain, one with ``--shadow`` running beside it. Rounds
alternate which goes first, so that machine noise hits both alike; the
figures are CPU milliseconds per document of this process, per round and
their median.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from invoicing_validate.validation import Validator

ROOT = Path(__file__).resolve().parents[1]
FR_CTC = "urn:cen.eu:en16931:2017#compliant#urn.cpro.gouv.fr:1p0:einvoicingF2"


def documents() -> list[bytes]:
    ubl = (ROOT / "samples" / "ubl-invoice-valid.xml").read_text(encoding="utf-8")
    cii = (ROOT / "samples" / "cii-invoice-valid.xml").read_text(encoding="utf-8")
    ubl = ubl.replace(
        "<cbc:CustomizationID>urn:cen.eu:en16931:2017</cbc:CustomizationID>",
        f"<cbc:CustomizationID>{FR_CTC}</cbc:CustomizationID>",
    ).replace("<cbc:IssueDate>2025-03-14</cbc:IssueDate>", "<cbc:IssueDate>2026-03-16</cbc:IssueDate>", 1)
    cii = cii.replace("<ram:ID>urn:cen.eu:en16931:2017</ram:ID>", f"<ram:ID>{FR_CTC}</ram:ID>", 1).replace(
        '<udt:DateTimeString format="102">20250314<', '<udt:DateTimeString format="102">20260316<', 1
    )
    return [ubl.encode("utf-8"), cii.encode("utf-8")]


def cpu_ms_per_document(validator: Validator, docs: list[bytes], repeat: int) -> float:
    started = time.process_time()
    for _ in range(repeat):
        for data in docs:
            validator.validate(data)
    return (time.process_time() - started) / (repeat * len(docs)) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shadow", default="0.1", help="the release run in shadow (default 0.1)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--per-round", type=int, default=40, help="passes over the documents per round")
    args = parser.parse_args(argv)
    docs = documents()
    plain, shadowed = Validator(), Validator(shadow=args.shadow)
    for validator in (plain, shadowed):  # compile everything before measuring
        for data in docs:
            report = validator.validate(data)
            assert report.profile == "fr-ctc", report.profile
    figures: dict[str, list[float]] = {"plain": [], f"shadow {args.shadow}": []}
    order = [("plain", plain), (f"shadow {args.shadow}", shadowed)]
    for round_ in range(args.rounds):
        for name, validator in order if round_ % 2 == 0 else reversed(order):
            figures[name].append(cpu_ms_per_document(validator, docs, args.per_round))
    for name, values in figures.items():
        rounds = " ".join(f"{v:.1f}" for v in values)
        print(f"{name:12} CPU ms/document: {rounds}  median {statistics.median(values):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
