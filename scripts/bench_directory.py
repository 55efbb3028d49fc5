"""Benchmark of the in-memory directory index routing reads.

    .venv/bin/python scripts/bench_directory.py [--entries 1000000] [--lookups 200000]

Builds the index the way a route instance does at start (decoding the topic
records of a generated directory), measures its memory with tracemalloc,
then times ``resolve`` on a mix of invoices: SIREN, SIRET, SIRET + routing
code, SIREN + suffix addresses, and unknown buyers (REJ_ADR). Prints one JSON
object. Not a test: numbers depend on the machine (see docs/performance.md).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from invoicing_route.codec import Removal, decode_record, entry_change, entry_key
from invoicing_route.directory import DirectoryIndex, Entry, check_entry
from invoicing_route.domain import BuyerIdentifiers, resolve
from scripts.gen_directory_csv import rows as generated_rows


def topic_records(count: int) -> list[tuple[bytes, bytes]]:
    now = Timestamp()
    now.FromDatetime(datetime.now(UTC))
    records = []
    for siren, siret, code, suffix, platform, rsc, rcn, start, end in generated_rows(count, seed=42):
        entry = check_entry(
            siren=siren, siret=siret, routing_code=code, suffix=suffix, platform_id=platform,
            requires_service_code=rsc == "true", requires_commitment_number=rcn == "true",
            valid_from=start, valid_to=end,
        )  # fmt: skip
        records.append((entry_key(entry.entry_id), entry_change(entry, now)))
    return records


def build(records: list[tuple[bytes, bytes]]) -> DirectoryIndex:
    index = DirectoryIndex()
    for key, value in records:
        change = decode_record(key, value)
        assert isinstance(change, Entry) and not isinstance(change, Removal)
        index.put_entry(change)
    return index


def lookups(index: DirectoryIndex, count: int) -> list[BuyerIdentifiers]:
    rng = random.Random(1)  # noqa: S311 - reproducible sample, not security
    entries = [versions[0] for versions in index._entries.values()]
    picked: list[BuyerIdentifiers] = []
    for _ in range(count):
        if rng.random() < 0.1:
            picked.append(BuyerIdentifiers(endpoint=("999999998", "0225")))  # unknown: REJ_ADR
            continue
        parts = rng.choice(entries).parts
        if parts.siret:
            address = f"{parts.siren}_{parts.siret}" + (f"_{parts.routing_code}" if parts.routing_code else "")
            ids: tuple[tuple[str, str], ...] = ((parts.siret, "0009"),)
        else:
            address = f"{parts.siren}_{parts.suffix}" if parts.suffix else parts.siren
            ids = ((parts.siren, "0002"),)
        picked.append(
            BuyerIdentifiers(endpoint=(address, "0225"), ids=ids, buyer_reference="S", purchase_order_reference="P")
        )
    return picked


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=200_000)
    args = parser.parse_args(argv)

    records = topic_records(args.entries)
    gc.collect()
    tracemalloc.start()
    started = time.perf_counter()
    index = build(records)
    build_seconds = time.perf_counter() - started
    gc.collect()
    index_bytes, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    queries = lookups(index, args.lookups)
    day = datetime.now(UTC).date()
    routed = 0
    started = time.perf_counter()
    for buyer in queries:
        routed += resolve(index, buyer, day).routed
    resolve_seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "entries": len(index),
                "index_bytes": index_bytes,
                "bytes_per_entry": round(index_bytes / len(index), 1),
                "build_seconds_from_topic_records": round(build_seconds, 2),
                "lookups": len(queries),
                "routed": routed,
                "resolve_us_per_lookup": round(resolve_seconds / len(queries) * 1e6, 2),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
