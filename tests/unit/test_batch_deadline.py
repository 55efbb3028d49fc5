"""The adaptive batch rule of the stream runtime (batch_deadline): a quiet
stream's record is dispatched at once, a busy stream's batches are spaced
by the interval, and the window always caps the wait."""

from __future__ import annotations

import math

from invoicing_common.kafka.consume import _Subscription, batch_deadline

WINDOW = _Subscription(("t",), batch_size=200, batch_window=0.100)
ADAPTIVE = _Subscription(("t",), batch_size=200, batch_window=0.100, batch_interval=0.025)


def test_without_an_interval_every_batch_waits_the_window() -> None:
    assert batch_deadline(10.0, -math.inf, WINDOW) == 10.100
    assert batch_deadline(10.0, 9.999, WINDOW) == 10.100


def test_a_quiet_stream_is_dispatched_at_once() -> None:
    # The previous batch went long ago (or never): no reason to wait.
    assert batch_deadline(10.0, -math.inf, ADAPTIVE) == 10.0
    assert batch_deadline(10.0, 9.5, ADAPTIVE) == 10.0


def test_a_busy_stream_waits_for_the_interval_since_the_last_batch() -> None:
    assert math.isclose(batch_deadline(10.0, 9.990, ADAPTIVE), 10.015)


def test_the_window_caps_the_wait() -> None:
    long_interval = _Subscription(("t",), batch_size=200, batch_window=0.100, batch_interval=1.0)
    assert batch_deadline(10.0, 9.990, long_interval) == 10.100
