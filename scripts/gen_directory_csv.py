"""Write a synthetic directory CSV for `invoicectl directory import`.

    .venv/bin/python scripts/gen_directory_csv.py --rows 1000000 /tmp/directory-1m.csv

Every row is valid and every key distinct: 60 % SIREN entries, 20 % SIRET,
10 % SIRET + routing code, 10 % SIREN + suffix, spread over a few platforms,
with some B2G flags and validity periods. Deterministic for a given --seed.
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
from pathlib import Path

COLUMNS = [
    "siren", "siret", "routing_code", "suffix", "platform_id", "requires_service_code",
    "requires_commitment_number", "valid_from", "valid_to",
]  # fmt: skip
_DOUBLE = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)


def luhn_complete(payload: str) -> str:
    """``payload`` followed by the digit that makes its Luhn checksum valid."""
    total = 0
    double = True  # the rightmost payload digit sits next to the check digit
    for ch in reversed(payload):
        n = ord(ch) - 48
        total += _DOUBLE[n] if double else n
        double = not double
    return payload + str((10 - total % 10) % 10)


def rows(count: int, seed: int, first: int = 10_000_000) -> list[list[str]]:
    rng = random.Random(seed)  # noqa: S311 - reproducible data, not security
    platforms = ["local", "pdp-001", "pdp-002", "pdp-003", "pdp-004"]
    out: list[list[str]] = []
    base = first  # 8-digit SIREN payloads
    i = 0
    while len(out) < count:
        siren = luhn_complete(str(base + i))
        i += 1
        if siren.startswith("356000000"):
            continue  # La Poste numbers follow another rule
        kind = rng.random()
        platform = rng.choice(platforms)
        b2g = rng.random() < 0.1
        valid_from = "2025-01-01" if rng.random() < 0.3 else ""
        valid_to = "2030-12-31" if rng.random() < 0.1 else ""
        flags = ["true" if b2g else "false", "true" if b2g and rng.random() < 0.5 else "false"]
        if kind < 0.6:
            out.append([siren, "", "", "", platform, *flags, valid_from, valid_to])
        elif kind < 0.8:
            siret = luhn_complete(f"{siren}{rng.randrange(10_000):04d}")
            out.append([siren, siret, "", "", platform, *flags, valid_from, valid_to])
        elif kind < 0.9:
            siret = luhn_complete(f"{siren}{rng.randrange(10_000):04d}")
            code = f"RC{rng.randrange(1_000_000):06d}"
            out.append([siren, siret, code, "", platform, *flags, valid_from, valid_to])
        else:
            out.append([siren, "", "", f"S{rng.randrange(1000):03d}", platform, *flags, valid_from, valid_to])
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--first", type=int, default=10_000_000, help="first 8-digit SIREN payload")
    args = parser.parse_args(argv)
    with args.out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows(rows(args.rows, args.seed, args.first))
    print(f"wrote {args.rows} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
