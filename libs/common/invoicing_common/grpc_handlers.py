"""Pieces shared by gRPC server interceptors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any


async def responses(result: Any) -> AsyncIterator[Any]:
    """A streaming handler either yields its responses (async generator) or
    writes them with context.write() and returns a coroutine."""
    if hasattr(result, "__aiter__"):
        async for item in result:
            yield item
    else:
        await result
