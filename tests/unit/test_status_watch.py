"""WatchInvoices refuses to resume from a position whose events were pruned,
rather than skip them in silence (the queries are a fake: the decision is
the servicer's)."""

from __future__ import annotations

from typing import Any, NoReturn

import grpc
import pytest
from invoicing.v1 import status_pb2

from invoicing_common.auth.principal import Principal, bind_principal, reset_principal
from invoicing_status.api import StatusServicer


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class Context:
    async def abort(self, code: grpc.StatusCode, details: str, trailing_metadata: Any = ()) -> NoReturn:
        raise Aborted(code, details)

    def done(self) -> bool:
        return True  # one pass of the loop is enough here


class Queries:
    def __init__(self, pruned_through: int) -> None:
        self._pruned = pruned_through

    async def pruned_through(self) -> int:
        return self._pruned

    async def head_position(self) -> int:
        return 500


async def _watch(from_position: int, pruned_through: int) -> None:
    servicer = StatusServicer(None, Queries(pruned_through), None)  # type: ignore[arg-type]
    principal = Principal("sub", "client", frozenset(), frozenset(), expires_at=4_000_000_000.0)
    token = bind_principal(principal)
    try:
        request = status_pb2.WatchInvoicesRequest(from_position=from_position)
        async for _ in servicer.WatchInvoices(request, Context()):  # type: ignore[arg-type]
            pass
    finally:
        reset_principal(token)


async def test_a_position_older_than_the_pruned_ones_is_refused() -> None:
    with pytest.raises(Aborted) as refused:
        await _watch(from_position=50, pruned_through=100)
    assert refused.value.code == grpc.StatusCode.OUT_OF_RANGE
    assert "from_position" in refused.value.details and "100" in refused.value.details


async def test_the_last_pruned_position_and_later_ones_are_served() -> None:
    await _watch(from_position=100, pruned_through=100)
    await _watch(from_position=0, pruned_through=100)  # from now
