"""Kafka topic names: a public contract (see docs/api.md).

The base names below are the contract. INVOICING_TOPIC_PREFIX (default
empty) is put in front of every one of them, read once at import: two
platforms sharing one Kafka cluster (`make up PLATFORMS=2`: platform B
uses `peer.`) keep their records apart without another naming scheme.
"""

from __future__ import annotations

import os
from typing import Final

ENV_PREFIX: Final = "INVOICING_TOPIC_PREFIX"
PREFIX: Final = os.environ.get(ENV_PREFIX, "")


def prefixed(base: str, prefix: str = PREFIX) -> str:
    """The topic name ``base`` takes on a platform whose prefix is ``prefix``."""
    return prefix + base


def base_name(name: str, prefix: str = PREFIX) -> str:
    """The contract's name of topic ``name`` (this platform's prefix taken
    off); a name without the prefix is returned as it is."""
    return name[len(prefix) :] if prefix and name.startswith(prefix) else name


RECEIVED = prefixed("invoicing.invoice.received.v1")
VALIDATED = prefixed("invoicing.invoice.validated.v1")
ROUTED = prefixed("invoicing.invoice.routed.v1")
STATUS = prefixed("invoicing.invoice.status.v1")
DLQ = prefixed("invoicing.invoice.dlq.v1")

PIPELINE_TOPICS: tuple[str, ...] = (RECEIVED, VALIDATED, ROUTED, STATUS, DLQ)

# Invoices the destination platform acknowledged (events_pb2.InvoiceDelivered).
DELIVERED = prefixed("invoicing.invoice.delivered.v1")

# Where a French rules release run in shadow disagrees with the one in force
# (events_pb2.RulesShadowDiff); read by operators, never by the pipeline.
RULES_SHADOW = prefixed("invoicing.rules.shadow.v1")

# The buyer directory: compacted, the latest record per key is the current
# state of a directory entry or service (see proto/invoicing/v1/directory.proto).
DIRECTORY = prefixed("invoicing.directory.entries.v1")
# Dead letters put back on their source topic (`invoicectl dlq replay`),
# keyed by the letter's position on the DLQ.
DLQ_REPLAYS = prefixed("invoicing.invoice.dlq-replays.v1")
COMPACTED_TOPICS: tuple[str, ...] = (DIRECTORY, DLQ_REPLAYS)
ALL_TOPICS: tuple[str, ...] = (*PIPELINE_TOPICS, DELIVERED, RULES_SHADOW, *COMPACTED_TOPICS)

# Documents travel inline in the received/validated events, so every hop must
# accept records this large (a 5 MiB invoice plus its envelope fits easily).
MAX_MESSAGE_BYTES = 32 * 1024 * 1024
# A dead letter wraps a record of up to MAX_MESSAGE_BYTES with its reason:
# the DLQ takes a little more than the topics it collects from.
DLQ_MAX_MESSAGE_BYTES = MAX_MESSAGE_BYTES + 1024 * 1024
