"""CPU per Factur-X PDF of the validator's container step (reading the PDF,
finding its one invoice XML, listing its attached files, reading the XMP
conformance level), on the PDFs of the ``invoicectl bench`` mix.

    .venv/bin/python scripts/bench_pdf_extraction.py [--count 300] [--rounds 3]

Each round reads every PDF once, timed by this thread's CPU clock, after
one untimed pass (imports, qpdf's limits, caches). To compare two versions
of the validator, run it in alternation with the other version's package
first on ``PYTHONPATH`` (a git worktree's ``services/validate``).
"""

from __future__ import annotations

import argparse
import statistics
import time

from invoicectl.bench.generator import Generator, Kind
from invoicing_validate.validation.embedded import MAX_EMBEDDED_BYTES, MAX_EMBEDDED_FILES
from invoicing_validate.validation.formats import extract_pdf_xml


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300, help="distinct PDFs (default 300)")
    parser.add_argument("--rounds", type=int, default=3, help="timed passes over them (default 3)")
    args = parser.parse_args()
    generator = Generator("pdfbench", seed=1)
    pdfs = [generator.document(i, Kind.FACTURX, True).data for i in range(args.count)]
    for data in pdfs:
        extract_pdf_xml(data, max_files=MAX_EMBEDDED_FILES, max_bytes=MAX_EMBEDDED_BYTES)
    per_pdf: list[float] = []
    for _ in range(args.rounds):
        started = time.thread_time()
        for data in pdfs:
            extract_pdf_xml(data, max_files=MAX_EMBEDDED_FILES, max_bytes=MAX_EMBEDDED_BYTES)
        per_pdf.append((time.thread_time() - started) / len(pdfs) * 1000)
    rounds = ", ".join(f"{ms:.3f}" for ms in per_pdf)
    median = statistics.median(per_pdf)
    print(f"{len(pdfs)} PDFs of {len(pdfs[0])} bytes: {median:.3f} ms CPU per PDF (rounds: {rounds})")


if __name__ == "__main__":
    main()
