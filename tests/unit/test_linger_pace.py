"""The pace of a stream producer's linger: none while records are rarer
than two per busy linger (each goes at once), the busy linger from there,
and none again below one and a half per linger."""

from __future__ import annotations

import inspect

import pytest
from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.producer.message_accumulator import MessageAccumulator  # type: ignore[import-untyped]

from invoicing_common.kafka.clients import set_linger
from invoicing_common.kafka.pace import LingerPace


def _steady(pace: LingerPace, per_second: float, seconds: float, start: float = 0.0) -> tuple[float, int]:
    """One record every 1/per_second s for ``seconds``; returns the clock
    and how many times the linger changed."""
    now, step, changes = start, 1 / per_second, 0
    while now < start + seconds:
        now += step
        changes += pace.observe(now, 1)
    return now, changes


def test_a_producer_starts_without_lingering() -> None:
    pace = LingerPace(busy_linger_ms=10)
    assert pace.linger_ms == 0
    assert pace.observe(0.0, 1) is False
    assert pace.linger_ms == 0


def test_records_rarer_than_two_per_linger_go_at_once() -> None:
    # 125 a second, 1.25 per 10 ms: half load of a fast hour's closed loop.
    pace = LingerPace(busy_linger_ms=10)
    _steady(pace, 125, 10)
    assert pace.linger_ms == 0


def test_records_from_two_per_linger_share_requests() -> None:
    # 250 a second, 2.5 per 10 ms: a stage in a saturated closed loop.
    pace = LingerPace(busy_linger_ms=10)
    _, changes = _steady(pace, 250, 3)
    assert pace.linger_ms == 10
    assert changes == 1


def test_the_linger_stops_when_records_slow_down() -> None:
    pace = LingerPace(busy_linger_ms=10)
    clock, _ = _steady(pace, 250, 3)
    # 170 a second (1.7 per linger) sits between the thresholds: it stays on.
    clock, _ = _steady(pace, 170, 5, start=clock)
    assert pace.linger_ms == 10
    # 130 a second (1.3 per linger, a fast hour's half load) is below the
    # lower one.
    _steady(pace, 130, 5, start=clock)
    assert pace.linger_ms == 0


def test_a_rate_between_the_thresholds_does_not_start_the_linger() -> None:
    pace = LingerPace(busy_linger_ms=10)
    _steady(pace, 170, 10)
    assert pace.linger_ms == 0


def test_after_a_pause_the_next_record_goes_at_once() -> None:
    pace = LingerPace(busy_linger_ms=10)
    clock, _ = _steady(pace, 400, 2)
    assert pace.linger_ms == 10
    # Three seconds without a record: the first one after it does not linger.
    assert pace.observe(clock + 3.0, 1) is True
    assert pace.linger_ms == 0


def test_the_quiet_linger_is_the_configured_one() -> None:
    pace = LingerPace(busy_linger_ms=20, quiet_linger_ms=5)
    assert pace.linger_ms == 5
    _steady(pace, 500, 2)
    assert pace.linger_ms == 20


def test_a_busy_linger_must_be_positive() -> None:
    with pytest.raises(ValueError, match="busy_linger_ms"):
        LingerPace(busy_linger_ms=0)


def test_aiokafka_gives_each_new_batch_the_attribute_set_linger_changes() -> None:
    # clients.set_linger changes this on the running producer's accumulator;
    # a version of aiokafka that renamed it would leave the linger fixed.
    assert "self._linger_time" in inspect.getsource(MessageAccumulator._append_batch)
    assert "self._linger_time = " in inspect.getsource(MessageAccumulator.__init__)


async def test_set_linger_changes_the_linger_of_a_producers_next_batches() -> None:
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9", linger_ms=0)
    set_linger(producer, 10)
    assert producer._message_accumulator._linger_time == pytest.approx(0.010)
    set_linger(producer, 0)
    assert producer._message_accumulator._linger_time == 0
