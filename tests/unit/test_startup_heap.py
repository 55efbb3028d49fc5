"""Objects alive once a service has started are left out of the cyclic
collector's passes; garbage made afterwards is still collected."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from invoicing_common.lifecycle import freeze_startup_heap


@pytest.fixture
def thawed() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def _cycle() -> None:
    a, b = _Node(), _Node()
    a.other, b.other = b, a


def test_the_start_up_heap_is_frozen_and_later_garbage_collected(thawed: None) -> None:
    built_at_start = [_Node() for _ in range(1000)]
    _cycle()  # garbage from start-up: collected, not frozen
    freeze_startup_heap()
    frozen = gc.get_freeze_count()
    assert frozen >= len(built_at_start)
    assert gc.collect() == 0  # nothing of the start-up heap left to find

    _cycle()
    assert gc.collect() >= 2  # made after start: collected as before
    assert gc.get_freeze_count() == frozen
    assert built_at_start[0].other is None
