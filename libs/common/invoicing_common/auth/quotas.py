"""Per-account quotas: a request rate (token buckets) and concurrent streams.

Pure bookkeeping with the clock passed in; not thread-safe, as everything
here runs on the service's one event loop.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable


class TokenBucket:
    """Holds up to ``burst`` tokens, refilled at ``rate`` per second; starts full."""

    __slots__ = ("_burst", "_rate", "_tokens", "_updated")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("a token bucket needs a positive rate and burst")
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._updated = now

    def take(self, now: float, cost: float = 1.0) -> float:
        """0.0 when ``cost`` tokens were there (and are now taken); otherwise
        the seconds until they will be, taking nothing."""
        self._refill(now)
        if self._tokens >= cost:
            self._tokens -= cost
            return 0.0
        if cost > self._burst:
            return math.inf
        return (cost - self._tokens) / self._rate

    def is_full(self, now: float) -> bool:
        self._refill(now)
        return self._tokens >= self._burst

    def _refill(self, now: float) -> None:
        # A clock that steps back must not mint tokens later.
        if now > self._updated:
            self._tokens = min(self._burst, self._tokens + (now - self._updated) * self._rate)
            self._updated = now


class RateLimiter:
    """One token bucket per key (an account).

    Memory stays bounded: past ``max_keys`` buckets, those that have filled up
    again are dropped, since a full bucket is what a new one would be. Buckets
    are kept least recently used first, so that sweep stops at the first
    bucket still in use and costs O(1) per call on average.
    """

    def __init__(
        self,
        rate_per_second: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        if rate_per_second <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("a rate limiter needs a positive rate, burst and max_keys")
        self.rate_per_second = rate_per_second
        self.burst = burst
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def check(self, key: str) -> float:
        """0.0 when the call may go ahead, else the seconds to wait before retrying."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate_per_second, self.burst, now)
        else:
            self._buckets.move_to_end(key)
        wait = bucket.take(now)
        if len(self._buckets) > self._max_keys:
            self._drop_idle(now)
        return wait

    @property
    def bucket_count(self) -> int:
        # Not __len__: an empty limiter would be falsy, and `limiter or default` would drop it.
        return len(self._buckets)

    def _drop_idle(self, now: float) -> None:
        while len(self._buckets) > self._max_keys:
            key, bucket = next(iter(self._buckets.items()))
            if not bucket.is_full(now):
                # Everyone after it was used more recently; when all are busy
                # the accounts themselves are the bound.
                return
            del self._buckets[key]


class StreamLimiter:
    """Counts each key's open streams against a cap."""

    def __init__(self, max_per_key: int) -> None:
        if max_per_key < 1:
            raise ValueError("a stream limiter needs max_per_key >= 1")
        self.max_per_key = max_per_key
        self._active: dict[str, int] = {}

    def try_acquire(self, key: str) -> bool:
        count = self._active.get(key, 0)
        if count >= self.max_per_key:
            return False
        self._active[key] = count + 1
        return True

    def release(self, key: str) -> None:
        count = self._active.get(key, 0)
        if count <= 1:
            # Keys with no open stream take no memory.
            self._active.pop(key, None)
        else:
            self._active[key] = count - 1

    def active(self, key: str) -> int:
        return self._active.get(key, 0)
