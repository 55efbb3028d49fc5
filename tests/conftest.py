"""Shared fixtures. Tests that need the stack read its endpoints from the
environment that `make test` (deploy/local/stack.py test) provides."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support import Stack


@pytest.fixture(scope="session")
def stack() -> Stack:
    return Stack()


@pytest.fixture
async def status_follower(stack: Stack) -> AsyncIterator[object]:
    """Positioned at the end of the status topic before the test acts."""
    from invoicectl.kafka_follow import StatusFollower

    follower = StatusFollower(stack.kafka)
    await follower.start()
    try:
        yield follower
    finally:
        await follower.stop()
