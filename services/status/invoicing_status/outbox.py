"""Status events reach invoicing.invoice.status.v1 through the shared
transactional outbox (invoicing_common.kafka.outbox): each transition's
event is an outbox row written with its history row, published by one
relay among the instances, in commit order. The rows stay after
publication: WatchInvoices replays them (housekeeping prunes them)."""

from __future__ import annotations

from aiokafka.structs import ConsumerRecord  # type: ignore[import-untyped]
from google.protobuf.message import DecodeError
from invoicing.v1 import events_pb2

from invoicing_common import topics
from invoicing_common.kafka.outbox import OutboxTable
from invoicing_status.records import OUTBOX_CHANNEL

OUTBOX = OutboxTable(
    source="status",
    channel=OUTBOX_CHANNEL,
    topic_sql=f"'{topics.STATUS}'",
    key_sql="convert_to(invoice_id::text, 'UTF8')",
    value_sql="payload",
    keep_published=True,
)


def sequence_of(record: ConsumerRecord) -> int | None:
    """The outbox row of a status event published before records carried
    their row in a header: its sequence is the row's seq."""
    try:
        return events_pb2.StatusEvent.FromString(record.value).sequence or None
    except DecodeError:
        return None  # not ours; the topic is public
