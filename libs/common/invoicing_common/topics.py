"""Kafka topic names: a public contract (see docs/api.md)."""

from __future__ import annotations

RECEIVED = "invoicing.invoice.received.v1"
VALIDATED = "invoicing.invoice.validated.v1"
ROUTED = "invoicing.invoice.routed.v1"
STATUS = "invoicing.invoice.status.v1"
DLQ = "invoicing.invoice.dlq.v1"

PIPELINE_TOPICS: tuple[str, ...] = (RECEIVED, VALIDATED, ROUTED, STATUS, DLQ)

# Where a French rules release run in shadow disagrees with the one in force
# (events_pb2.RulesShadowDiff); read by operators, never by the pipeline.
RULES_SHADOW = "invoicing.rules.shadow.v1"

# The buyer directory: compacted, the latest record per key is the current
# state of a directory entry or service (see proto/invoicing/v1/directory.proto).
DIRECTORY = "invoicing.directory.entries.v1"
# Dead letters put back on their source topic (`invoicectl dlq replay`),
# keyed by the letter's position on the DLQ.
DLQ_REPLAYS = "invoicing.invoice.dlq-replays.v1"
COMPACTED_TOPICS: tuple[str, ...] = (DIRECTORY, DLQ_REPLAYS)
ALL_TOPICS: tuple[str, ...] = (*PIPELINE_TOPICS, RULES_SHADOW, *COMPACTED_TOPICS)

# Documents travel inline in the received/validated events, so every hop must
# accept records this large (a 5 MiB invoice plus its envelope fits easily).
MAX_MESSAGE_BYTES = 32 * 1024 * 1024
# A dead letter wraps a record of up to MAX_MESSAGE_BYTES with its reason:
# the DLQ takes a little more than the topics it collects from.
DLQ_MAX_MESSAGE_BYTES = MAX_MESSAGE_BYTES + 1024 * 1024
