"""How long a batch consumer's fetches, and a stream producer's sends, wait
for more records.

A batch consumer (status) fetches for ``kafka_batch_fetch_min_bytes`` or
``kafka_batch_fetch_max_wait_ms`` (32 KiB or 50 ms), so that under load a
batch, and its one transaction, holds several invoices' events. On a quiet
system the 32 KiB never fill: each lone event waited out the 50 ms, and an
idle consumer still asked the broker twenty times a second.

``FetchPace`` follows the records' arrival rate and picks the fetch: while
fewer than three records come per batch wait (60 a second with a 50 ms
wait: status at about 20 invoices a second), the record consumers' fetch
(from 1 byte, long-polling ``kafka_fetch_max_wait_ms``), and the stream
runtime dispatches each batch as soon as its first record is there instead
of keeping the batch interval: a record is handed over at once, and an
idle consumer asks the broker twice a second; from three records per wait,
the batch fetch and the batch interval. Below that rate a batch holds
about one invoice's events anyway (they come within a few tens of
milliseconds of each other), so the quiet form costs a fetch and a
transaction per event instead of per invoice: a few percent of a core at
10 invoices a second, on a machine then mostly idle, for half the
end-to-end latency (docs/performance-history.md, issue 18's twelfth round).

``LingerPace`` does the same for a stream producer's linger, the time a
send waits for others to share its produce request. With none, a stage
handling one record at a time sends nearly every record in a request of its
own: in the closed loop route sent 0.66 produce requests per invoice, and
the broker served 2.05 requests per invoice where the issue's first code,
lingering 20 ms, needed 0.85. A fixed linger makes every quiet hop wait
for nothing (10 ms took end-to-end p50 at 100 invoices/s from 53-58 to
103-105 ms). So the linger is on only while at least two sends come per
linger, where a request then carries two records or more; below one and a
half per linger it is off again, and a record goes at once (docs/performance-history.md,
issue 18's fourteenth round).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FetchShape:
    min_bytes: int
    max_wait_ms: int


@dataclass(kw_only=True)
class RatePace:
    """Busy or quiet, from how many records come per ``window`` (pure: the
    caller passes the clock)."""

    # The arrival rate is an exponentially decaying count over this horizon.
    horizon: float = 1.0
    # Busy from this many records per window, quiet again below this share
    # of it: the gap keeps a rate near the line from switching at every record.
    busy_from: float = 3.0
    quiet_below: float = 0.5
    busy: bool = True
    _level: float = field(default=0.0, repr=False)
    _at: float | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.horizon <= 0:
            raise ValueError(f"horizon must be positive, not {self.horizon}")
        if self.busy:
            # Starting busy, as if records had come at the threshold's rate:
            # it decays from there like any other count.
            self._level = self.busy_from / self._window_s * self.horizon

    @property
    def _window_s(self) -> float:
        raise NotImplementedError

    def rate(self, now: float) -> float:
        """Records per second, as of ``now``."""
        if self._at is None:
            return self._level / self.horizon
        return self._level * math.exp(-max(0.0, now - self._at) / self.horizon) / self.horizon

    def observe(self, now: float, records: int) -> bool:
        """``records`` arrived at ``now`` (0: a look that found none).
        Returns whether busy or quiet changed."""
        self._level = self.rate(now) * self.horizon + records
        self._at = now
        per_window = self.rate(now) * self._window_s
        busy = per_window >= self.busy_from * (self.quiet_below if self.busy else 1.0)
        changed = busy != self.busy
        self.busy = busy
        return changed


@dataclass(kw_only=True)
class FetchPace(RatePace):
    """The fetch to use next, from the records fetched so far; the window is
    the batch fetch's wait."""

    busy_fetch: FetchShape
    quiet_fetch: FetchShape
    busy: bool = True  # a consumer starts on a backlog as often as not

    @property
    def _window_s(self) -> float:
        # A 0 ms batch wait counts as 1 ms: the threshold stays finite.
        return max(self.busy_fetch.max_wait_ms, 1) / 1000

    @property
    def fetch(self) -> FetchShape:
        return self.busy_fetch if self.busy else self.quiet_fetch


@dataclass(kw_only=True)
class LingerPace(RatePace):
    """A producer's linger, from the records sent so far; the window is the
    busy linger."""

    busy_linger_ms: int
    quiet_linger_ms: int = 0
    busy_from: float = 2.0
    # Quiet again below 1.5 per linger, not 1: after a burst (the bench's
    # calibration, a backlog drained) a rate of 100 to 150 a second, this
    # machine's half load, kept a 10 ms linger on each of two hops and
    # added about 20 ms to the end-to-end p50 (docs/performance-history.md, fourteenth round).
    quiet_below: float = 0.75
    busy: bool = False  # a producer's first records go at once

    def __post_init__(self) -> None:
        if self.busy_linger_ms <= 0:
            raise ValueError(f"busy_linger_ms must be positive, not {self.busy_linger_ms}")
        super().__post_init__()

    @property
    def _window_s(self) -> float:
        return self.busy_linger_ms / 1000

    @property
    def linger_ms(self) -> int:
        return self.busy_linger_ms if self.busy else self.quiet_linger_ms
