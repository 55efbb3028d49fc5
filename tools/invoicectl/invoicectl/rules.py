"""French rules releases in shadow: the disagreements validate recorded.

Read from invoicing.rules.shadow.v1 (events_pb2.RulesShadowDiff), from a
date on. A redelivered validation repeats its record with the same event
id; each is shown once, the latest.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]
from google.protobuf.message import DecodeError
from invoicing.v1 import events_pb2

from invoicing_common import topics
from invoicing_common.kafka import assign_all, read_to_end
from invoicing_common.settings import KafkaClientSettings


@dataclass(frozen=True)
class Disagreement:
    diff: events_pb2.RulesShadowDiff

    @property
    def kind(self) -> str:
        """ "verdict" when the two releases decide differently, else "rules"."""
        return "verdict" if self.diff.active_valid != self.diff.shadow_valid else "rules"

    def as_json(self) -> dict[str, Any]:
        d = self.diff
        return {
            "invoice_id": d.invoice_id,
            "occurred_at": d.occurred_at.ToDatetime(tzinfo=UTC).isoformat().replace("+00:00", "Z"),
            "invoice_number": d.invoice_number,
            "issue_date": d.issue_date,
            "kind": self.kind,
            "active": {"release": d.active_release, "valid": d.active_valid, "only_rules": list(d.only_active)},
            "shadow": {"release": d.shadow_release, "valid": d.shadow_valid, "only_rules": list(d.only_shadow)},
        }


def dedupe(diffs: list[events_pb2.RulesShadowDiff]) -> list[Disagreement]:
    """One per event id (the latest), in the order of their first record."""
    latest: dict[str, events_pb2.RulesShadowDiff] = {}
    for diff in diffs:
        latest[diff.event_id] = diff
    return [Disagreement(d) for d in latest.values()]


async def disagreements(kafka: KafkaClientSettings, since: datetime) -> list[Disagreement]:
    """Every disagreement recorded at or after ``since``, oldest first."""
    consumer = AIOKafkaConsumer(**kafka.kafka_client_kwargs(), enable_auto_commit=False)
    await consumer.start()
    found: list[events_pb2.RulesShadowDiff] = []
    try:
        tps = await assign_all(consumer, topics.RULES_SHADOW)
        async for batch in read_to_end(consumer, tps, since_ms=int(since.timestamp() * 1000)):
            for records in batch.values():
                for record in records:
                    try:
                        found.append(events_pb2.RulesShadowDiff.FromString(record.value or b""))
                    except DecodeError:
                        continue  # not ours: nothing to show
    finally:
        await consumer.stop()
    found.sort(key=lambda d: (d.occurred_at.seconds, d.occurred_at.nanos))
    return dedupe(found)
