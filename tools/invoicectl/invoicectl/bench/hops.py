"""Per-hop latency of each invoice, from timestamps the pipeline already records.

* submit: the bench's own clock when the submission was sent (the scheduled
  time in the open loop, as for the end-to-end latency);
* 200: ``occurred_at`` of the SUBMITTED status event (ingest's receipt time);
* received: the record timestamp of the invoice's record on the received
  topic (CreateTime, set by ingest's outbox relay as it sends it), which
  splits 200 -> validated into ingest's outbox and validate's stage;
* validated, routed: the record timestamps of the invoice's records on the
  validated and routed topics (CreateTime, set by the producing service);
* final: ``occurred_at`` of the first final status event (201, 203, 213, 501).

Every clock is the local stack's wall clock, on the same machine as the
bench. An invoice rejected by validation has no routed record: its
validated -> routed and routed -> final hops are absent, not zero.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]

from invoicectl.bench.report import HOPS, Latency
from invoicing_common import topics
from invoicing_common.kafka import assign_all, read_to_end
from invoicing_common.settings import KafkaClientSettings

# Records are read from a little before the run: the producers' clocks are
# the bench's (one machine), but a record's timestamp is taken before it is
# appended, and the time index is coarse.
SINCE_MARGIN_SECONDS = 30.0
READ_TIMEOUT_SECONDS = 120.0


@dataclass(frozen=True)
class InvoiceTimes:
    """Wall-clock seconds (epoch) of one invoice's steps; None when unknown."""

    submitted: float
    status_200: float | None = None
    received: float | None = None
    validated: float | None = None
    routed: float | None = None
    final: float | None = None


def _span(start: float | None, end: float | None) -> float | None:
    return end - start if start is not None and end is not None else None


def hop_seconds(times: InvoiceTimes) -> dict[str, float | None]:
    """Each hop of one invoice; a hop needs both of its ends."""
    return {
        "submit_to_200": _span(times.submitted, times.status_200),
        "200_to_validated": _span(times.status_200, times.validated),
        "200_to_received": _span(times.status_200, times.received),
        "received_to_validated": _span(times.received, times.validated),
        "validated_to_routed": _span(times.validated, times.routed),
        "routed_to_final": _span(times.routed, times.final),
        "total": _span(times.submitted, times.final),
    }


def hop_latencies(invoices: Iterable[InvoiceTimes]) -> dict[str, Latency | None]:
    """Percentiles per hop over the invoices that have it; None for a hop
    no invoice has (a JSON null rather than NaN percentiles)."""
    samples: dict[str, list[float]] = {hop: [] for hop in HOPS}
    for times in invoices:
        for hop, seconds in hop_seconds(times).items():
            if seconds is not None:
                samples[hop].append(seconds)
    return {hop: Latency.of_seconds(values) if values else None for hop, values in samples.items()}


def earliest_by_key(records: Iterable[Any], wanted: Collection[str]) -> dict[str, float]:
    """Epoch seconds of the first record per wanted key: a record sent again
    (at-least-once delivery) must not move the hop later."""
    found: dict[str, float] = {}
    for record in records:
        if record.key is None:
            continue
        key = record.key.decode("utf-8", "replace")
        if key not in wanted:
            continue
        at = record.timestamp / 1000.0
        if key not in found or at < found[key]:
            found[key] = at
    return found


async def _read_topic(
    kafka: KafkaClientSettings, topic: str, wanted: Collection[str], since: float
) -> dict[str, float]:
    # Group-less: a reader after the run must not take partitions from a service.
    consumer = AIOKafkaConsumer(
        **kafka.kafka_client_kwargs(),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id="invoicectl-bench",
    )
    await consumer.start()
    try:
        tps = await assign_all(consumer, topic)
        found: dict[str, float] = {}
        since_ms = int((since - SINCE_MARGIN_SECONDS) * 1000)
        async for batch in read_to_end(consumer, tps, since_ms=since_ms):
            for records in batch.values():
                for key, at in earliest_by_key(records, wanted).items():
                    if key not in found or at < found[key]:
                        found[key] = at
        return found
    finally:
        await consumer.stop()


async def stage_times(
    kafka: KafkaClientSettings, wanted: Collection[str], since: float
) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Per topic (received, validated, routed), the record time of each wanted invoice,
    each partition read to its end offset at call time from ``since`` (epoch
    seconds). A topic that cannot be read (no READ for this principal, say)
    leaves its hops out; the second value says which and why."""
    wanted = frozenset(wanted)
    names = (topics.RECEIVED, topics.VALIDATED, topics.ROUTED)

    async def one(topic: str) -> dict[str, float]:
        return await asyncio.wait_for(_read_topic(kafka, topic, wanted, since), READ_TIMEOUT_SECONDS)

    results = await asyncio.gather(*(one(t) for t in names), return_exceptions=True)
    times: dict[str, dict[str, float]] = {}
    unavailable: list[str] = []
    for topic, result in zip(names, results, strict=True):
        if isinstance(result, dict):
            times[topic] = result
        elif isinstance(result, KafkaError | RuntimeError | OSError | TimeoutError):
            unavailable.append(f"{topic}: {type(result).__name__}: {result}")
            times[topic] = {}
        else:
            raise result
    return times, unavailable
