"""The pace of a batch consumer's fetches: quiet (a record handed over as
soon as it is there) while records are rarer than three per batch wait, the
batch fetch from there, with a gap between the two thresholds."""

from __future__ import annotations

import inspect

import pytest
from aiokafka.consumer.fetcher import Fetcher  # type: ignore[import-untyped]

from invoicing_common.kafka.pace import FetchPace, FetchShape

BUSY = FetchShape(min_bytes=32 * 1024, max_wait_ms=50)
QUIET = FetchShape(min_bytes=1, max_wait_ms=500)


def _pace(**kwargs: object) -> FetchPace:
    return FetchPace(busy_fetch=BUSY, quiet_fetch=QUIET, **kwargs)  # type: ignore[arg-type]


def _steady(pace: FetchPace, per_second: float, seconds: float, start: float = 0.0) -> float:
    """Feed one record every 1/per_second s for ``seconds``; returns the clock."""
    now, step = start, 1 / per_second
    while now < start + seconds:
        now += step
        pace.observe(now, 1)
    return now


def test_starts_with_the_batch_fetch() -> None:
    # A consumer often starts on a backlog: batches from the first fetch,
    # as if records had come at the threshold's rate (60 a second here).
    pace = _pace()
    assert pace.fetch == BUSY
    assert pace.rate(0.0) == pytest.approx(60)
    assert pace.observe(0.0, 1) is False


def test_an_idle_consumer_turns_quiet() -> None:
    pace = _pace()
    changed = [pace.observe(t * 0.5, 0) for t in range(1, 5)]
    assert pace.fetch == QUIET
    assert changed.count(True) == 1


def test_records_rarer_than_three_per_wait_keep_it_quiet() -> None:
    pace = _pace(busy=False)
    # 20 records a second: one per 50 ms wait (status at about 7 invoices/s).
    _steady(pace, 20, 5)
    assert pace.fetch == QUIET


def test_records_faster_than_three_per_wait_make_it_batch() -> None:
    pace = _pace(busy=False)
    # 150 a second (status's three events per invoice at 50 invoices/s).
    _steady(pace, 150, 2)
    assert pace.fetch == BUSY


def test_a_burst_makes_it_batch_at_once() -> None:
    pace = _pace(busy=False)
    assert pace.observe(10.0, 200) is True
    assert pace.fetch == BUSY


def test_the_gap_between_thresholds_keeps_a_rate_near_the_line_steady() -> None:
    # 45 a second: 2.25 per 50 ms wait, between the thresholds (1.5 and 3).
    busy, quiet = _pace(busy=True), _pace(busy=False)
    clock = _steady(busy, 45, 10)
    _steady(quiet, 45, 10)
    assert (busy.fetch, quiet.fetch) == (BUSY, QUIET)
    # Above the upper threshold the quiet one batches; below the lower one
    # the busy one stops.
    _steady(quiet, 75, 5, start=clock)
    _steady(busy, 24, 5, start=clock)
    assert (busy.fetch, quiet.fetch) == (QUIET, BUSY)


def test_the_rate_decays_with_time() -> None:
    pace = _pace(busy=False)
    pace.observe(0.0, 100)
    assert pace.rate(0.0) == pytest.approx(100)
    assert pace.rate(1.0) == pytest.approx(100 / 2.718281828, rel=1e-6)
    assert pace.rate(-1.0) == pytest.approx(100)  # a clock never runs back here


def test_a_horizon_must_be_positive() -> None:
    with pytest.raises(ValueError, match="horizon"):
        _pace(horizon=0)


def test_aiokafka_builds_each_fetch_from_the_attributes_the_pace_sets() -> None:
    # StreamApp._set_fetch changes these on the running consumer's fetcher;
    # a version of aiokafka that renamed them would leave the fetch fixed.
    source = inspect.getsource(Fetcher._get_actions_per_node)
    assert "self._fetch_max_wait_ms" in source
    assert "self._fetch_min_bytes" in source
