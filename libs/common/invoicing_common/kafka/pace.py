"""How long a batch consumer's fetches wait for more records.

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
end-to-end latency (docs/performance.md, issue 18's twelfth round).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FetchShape:
    min_bytes: int
    max_wait_ms: int


@dataclass
class FetchPace:
    """The fetch to use next, from the records seen so far (pure: the caller
    passes the clock)."""

    busy_fetch: FetchShape
    quiet_fetch: FetchShape
    # The arrival rate is an exponentially decaying count over this horizon.
    horizon: float = 1.0
    # Busy from this many records per batch wait, quiet again below half of
    # it: the gap keeps a rate near the line from switching at every fetch.
    busy_from: float = 3.0
    busy: bool = True  # a consumer starts on a backlog as often as not
    _level: float = field(default=0.0, repr=False)
    _at: float | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.horizon <= 0:
            raise ValueError(f"horizon must be positive, not {self.horizon}")
        if self.busy:
            # Starting busy, as if records had come at the threshold's rate:
            # it decays from there like any other count.
            self._level = self.busy_from / self._wait_s * self.horizon

    @property
    def _wait_s(self) -> float:
        # A 0 ms batch wait counts as 1 ms: the threshold stays finite.
        return max(self.busy_fetch.max_wait_ms, 1) / 1000

    @property
    def fetch(self) -> FetchShape:
        return self.busy_fetch if self.busy else self.quiet_fetch

    def rate(self, now: float) -> float:
        """Records per second, as of ``now``."""
        if self._at is None:
            return self._level / self.horizon
        return self._level * math.exp(-max(0.0, now - self._at) / self.horizon) / self.horizon

    def observe(self, now: float, records: int) -> bool:
        """``records`` arrived at ``now`` (a poll's result, 0 for an empty
        one). Returns whether the fetch to use changed."""
        self._level = self.rate(now) * self.horizon + records
        self._at = now
        per_wait = self.rate(now) * self._wait_s
        busy = per_wait >= self.busy_from if not self.busy else per_wait >= self.busy_from / 2
        changed = busy != self.busy
        self.busy = busy
        return changed
