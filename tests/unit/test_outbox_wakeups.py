"""Which notifications wake an outbox relay: those of writers elsewhere,
not those of writers in its own process, which wake it themselves once they
commit (the notification would only make it look again for rows it sent)."""

from __future__ import annotations

from invoicing_common.db import Database
from invoicing_common.kafka.outbox import WOKEN_IN_PROCESS, OutboxRelay, OutboxTable
from invoicing_common.settings import KafkaClientSettings


def _relay() -> OutboxRelay:
    table = OutboxTable(source="unit", channel="unit_outbox")
    # Neither the database nor Kafka is reached: no relay is started.
    return OutboxRelay(Database("postgresql://unused/unused", "unit"), table, KafkaClientSettings(), "unit-relay")


async def test_a_notification_from_another_process_wakes_the_relay() -> None:
    relay = _relay()
    relay._notified(None, 4242, "unit_outbox", "")
    assert relay._wake.is_set()


async def test_a_notification_from_a_writer_that_wakes_it_itself_does_not() -> None:
    relay = _relay()
    relay._notified(None, 4242, "unit_outbox", WOKEN_IN_PROCESS)
    assert not relay._wake.is_set()
    relay.wake()
    assert relay._wake.is_set()


def test_the_in_process_payload_is_not_empty() -> None:
    # Writers that leave the waking to the notification send an empty payload.
    assert WOKEN_IN_PROCESS
