"""Everything the services do with Kafka, written once.

- ``clients``: the producer every service uses, whole-topic reads;
- ``admin``: topics provisioned from deploy/kafka/topics.toml, checked at start;
- ``errors``: which failures are transient, which are the record's own;
- ``handling``: the one error policy around every handler;
- ``consume``: the stream runtime (consumer-group member, commits, rebalances);
- ``outbox``: rows written with the state, published by one relay;
- ``dlq``: dead letters;
- ``testing``: the in-memory harness for handlers.
"""

from invoicing_common.kafka.admin import MissingTopics, ensure_topics, require_topics
from invoicing_common.kafka.clients import ProducerService, assign_all, headers_to_carrier, producer, read_to_end
from invoicing_common.kafka.consume import OutTopic, StreamApp, register_lag_gauge, send
from invoicing_common.kafka.errors import PermanentError, backoff_delays, classify, is_transient, retry_transient
from invoicing_common.kafka.handling import Record, decode_event

__all__ = [
    "MissingTopics",
    "OutTopic",
    "PermanentError",
    "ProducerService",
    "Record",
    "StreamApp",
    "assign_all",
    "backoff_delays",
    "classify",
    "decode_event",
    "ensure_topics",
    "headers_to_carrier",
    "is_transient",
    "producer",
    "read_to_end",
    "register_lag_gauge",
    "require_topics",
    "retry_transient",
    "send",
]
