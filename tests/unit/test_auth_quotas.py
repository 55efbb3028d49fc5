"""Quotas: token bucket arithmetic, the per-account limiter and its memory bound, the stream cap."""

from __future__ import annotations

import math

import pytest

from invoicing_common.auth.quotas import RateLimiter, StreamLimiter, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_starts_full_and_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)  # one token every half second
    assert bucket.take(0.25) == pytest.approx(0.25)  # refused calls take nothing
    assert bucket.take(0.5) == 0.0
    assert bucket.take(0.5) == pytest.approx(0.5)


def test_a_bucket_never_holds_more_than_its_burst() -> None:
    bucket = TokenBucket(rate=10.0, burst=2, now=0.0)
    assert bucket.take(3600.0, cost=2) == 0.0
    assert bucket.take(3600.0) == pytest.approx(0.1)
    assert not bucket.is_full(3600.1) and bucket.is_full(3600.25)


def test_a_cost_above_the_burst_can_never_be_met() -> None:
    bucket = TokenBucket(rate=1.0, burst=2, now=0.0)
    assert bucket.take(0.0, cost=3) == math.inf
    assert bucket.take(0.0, cost=2) == 0.0


def test_a_clock_stepping_back_mints_nothing() -> None:
    bucket = TokenBucket(rate=1.0, burst=1, now=10.0)
    assert bucket.take(10.0) == 0.0
    assert bucket.take(5.0) == pytest.approx(1.0)
    assert bucket.take(10.5) == pytest.approx(0.5)


def test_buckets_need_a_positive_rate_and_burst() -> None:
    for rate, burst in ((0.0, 1), (1.0, 0), (-1.0, 1)):
        with pytest.raises(ValueError):
            TokenBucket(rate, burst, now=0.0)


def test_the_limiter_counts_each_key_apart() -> None:
    clock = Clock()
    limiter = RateLimiter(rate_per_second=1.0, burst=2, clock=clock)
    assert [limiter.check("a") for _ in range(2)] == [0.0, 0.0]
    assert limiter.check("a") == pytest.approx(1.0)
    assert limiter.check("b") == 0.0
    clock.now += 0.4
    assert limiter.check("a") == pytest.approx(0.6)
    clock.now += 0.6
    assert limiter.check("a") == 0.0


def test_idle_buckets_are_dropped_past_max_keys() -> None:
    clock = Clock()
    limiter = RateLimiter(rate_per_second=1.0, burst=2, clock=clock, max_keys=3)
    for key in ("a", "b", "c"):
        limiter.check(key)
    assert limiter.bucket_count == 3
    clock.now += 1.0  # a, b and c are full again
    limiter.check("c")  # c is busy again, and now the most recently used
    limiter.check("d")
    assert limiter.bucket_count == 3  # a dropped; b would be too, but the bound is met
    limiter.check("e")
    assert limiter.bucket_count == 3  # b dropped
    # Busy buckets are never dropped, which would hand their account a fresh burst.
    limiter.check("f")
    assert limiter.bucket_count == 4
    for key in ("c", "d", "e", "f"):
        limiter.check(key)
    assert limiter.check("c") > 0 and limiter.check("f") > 0
    clock.now += 10
    limiter.check("g")
    assert limiter.bucket_count == 3


def test_many_accounts_keep_memory_bounded() -> None:
    clock = Clock()
    limiter = RateLimiter(rate_per_second=100.0, burst=5, clock=clock, max_keys=100)
    for n in range(10_000):
        clock.now += 0.01  # each account calls once, then goes quiet
        assert limiter.check(f"account-{n}") == 0.0
    assert limiter.bucket_count <= 100


def test_the_stream_limiter_caps_each_key() -> None:
    streams = StreamLimiter(max_per_key=2)
    assert streams.try_acquire("a") and streams.try_acquire("a")
    assert not streams.try_acquire("a")
    assert streams.try_acquire("b")
    assert streams.active("a") == 2
    streams.release("a")
    assert streams.active("a") == 1
    assert streams.try_acquire("a")
    streams.release("a")
    streams.release("a")
    streams.release("a")  # one release too many harms no one
    assert streams.active("a") == 0
    assert streams.try_acquire("a") and streams.try_acquire("a") and not streams.try_acquire("a")
