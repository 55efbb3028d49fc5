"""Objects alive once a service has started are left out of the cyclic
collector's passes; garbage made afterwards is still collected.

The check runs in a fresh interpreter: in the test process, threads left
by earlier tests can free frozen objects at any moment (a frozen object
dies by its reference count like any other), and the freeze count then
falls by a few while the test watches it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

_CHECK = textwrap.dedent(
    """
    import gc
    import weakref

    from invoicing_common.lifecycle import freeze_startup_heap


    class Node:
        def __init__(self):
            self.other = None


    def cycle():
        a, b = Node(), Node()
        a.other, b.other = b, a
        return weakref.ref(a)


    built_at_start = [Node() for _ in range(1000)]
    start_up_garbage = cycle()
    freeze_startup_heap()
    assert start_up_garbage() is None  # collected, not frozen
    frozen = gc.get_freeze_count()
    assert frozen >= len(built_at_start), frozen
    assert gc.collect() == 0  # nothing of the start-up heap left to find

    cycle()
    collected = gc.collect()
    assert collected >= 2, collected  # made after start: collected as before
    assert gc.get_freeze_count() == frozen, (gc.get_freeze_count(), frozen)
    assert built_at_start[0].other is None
    """
)


def test_the_start_up_heap_is_frozen_and_later_garbage_collected() -> None:
    result = subprocess.run([sys.executable, "-c", _CHECK], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
