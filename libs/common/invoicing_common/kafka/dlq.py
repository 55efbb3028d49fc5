"""Dead letters: a record that cannot be processed, kept with its reason.

The DLQ topic holds, per failure, the source record (topic, partition,
offset, key, value; its headers travel as the dead letter's headers) and
why it failed. ``invoicectl dlq`` lists, shows and replays them.
"""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp
from invoicing.v1 import events_pb2

from invoicing_common.ids import stage_event_id


def dead_letter(
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    error: BaseException,
    consumer_group: str,
) -> events_pb2.DeadLetter:
    failed_at = Timestamp()
    failed_at.FromDatetime(datetime.now(UTC))
    return events_pb2.DeadLetter(
        # Same source record -> same id, so a redelivered poison record is
        # recognisable as one failure in the DLQ.
        event_id=stage_event_id(f"{topic}/{partition}/{offset}", f"dlq:{consumer_group}"),
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        key=key or b"",
        value=value or b"",
        error_type=type(error).__name__,
        error=str(error)[:2000],
        consumer_group=consumer_group,
        failed_at=failed_at,
    )
