"""The machine's speed of the hour: a fixed pure-Python task, timed on the
CPU clock of the calling thread.

This development machine is a shared virtual machine whose speed drifts by
a factor of two within a day (docs/performance.md, "Cold caches"): the
same validation took 3.05 ms of CPU in the morning and 6.01 ms in the
afternoon, and this task 0.324 and 0.635 ms. A CPU figure measured beside
the probe can be compared across hours in probe calls (figure ÷ probe),
which an absolute figure cannot.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

WARM_UP_CALLS = 30
PROBE_CALLS = 300
ROUNDS = 5


def control_task() -> Callable[[], object]:
    """About a third of a millisecond of pure Python (on a fast hour) over
    data that stays in a core's cache."""
    text = json.dumps([{"n": i, "s": str(i) * 4} for i in range(1200)])

    def run() -> int:
        return sum(item["n"] + len(item["s"]) for item in json.loads(text))

    return run


def probe(calls: int = PROBE_CALLS, rounds: int = ROUNDS) -> float:
    """Milliseconds of this thread's CPU per call of ``control_task``, back
    to back after a warm-up: the median of ``rounds`` rounds of ``calls``
    // ``rounds`` calls, so that a round interrupted by other work weighs
    no more than one."""
    if calls < rounds or rounds < 1:
        raise ValueError(f"calls ({calls}) must be at least rounds ({rounds}), and rounds at least 1")
    task = control_task()
    for _ in range(WARM_UP_CALLS):
        task()
    per_round = calls // rounds
    figures = []
    for _ in range(rounds):
        started = time.thread_time()
        for _ in range(per_round):
            task()
        figures.append(1000 * (time.thread_time() - started) / per_round)
    return round(statistics.median(figures), 4)


@dataclass(frozen=True)
class SpeedProbe:
    """The probe before and after a bench's measured phase (ms per call)."""

    before: float
    after: float

    @property
    def mean(self) -> float:
        return (self.before + self.after) / 2

    def in_calls(self, cpu_ms: float) -> float:
        """``cpu_ms`` in probe calls: a CPU figure the machine's speed of
        the hour moves less."""
        return round(cpu_ms / self.mean, 2)
