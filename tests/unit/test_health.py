"""Health follows the checks: NOT_SERVING while any fails, SERVING again
when all pass; a database gets a grace period before it counts."""

from __future__ import annotations

from typing import Any

from invoicing_common.health import Check, HealthMonitor, database_reachable


class FakeServer:
    ready = True

    def __init__(self) -> None:
        self.told: list[bool] = []

    async def set_serving(self, serving: bool) -> None:
        self.told.append(serving)


def _check(name: str, state: dict[str, bool]) -> Check:
    async def probe() -> bool:
        if state[name] is None:  # type: ignore[comparison-overlap]
            raise RuntimeError("probe broke")
        return state[name]

    return Check(name, probe)


async def test_not_serving_while_any_check_fails_and_serving_again_after() -> None:
    state = {"consume loop": True, "database": True}
    server = FakeServer()
    monitor = HealthMonitor(server, [_check("consume loop", state), _check("database", state)])  # type: ignore[arg-type]
    await monitor.step()
    assert server.told == []
    state["consume loop"] = False
    await monitor.step()
    state["database"] = False
    await monitor.step()
    assert server.told == [False] and monitor.failing == ["consume loop", "database"]
    state["consume loop"] = True
    await monitor.step()
    assert server.told == [False]
    state["database"] = True
    await monitor.step()
    assert server.told == [False, True] and monitor.failing == []
    # A probe that raises counts as failing.
    state["database"] = None  # type: ignore[assignment]
    await monitor.step()
    assert server.told == [False, True, False]


async def test_a_server_not_ready_is_left_alone() -> None:
    state = {"database": False}
    server = FakeServer()
    server.ready = False
    monitor = HealthMonitor(server, [_check("database", state)])  # type: ignore[arg-type]
    await monitor.step()
    assert server.told == []


class _Pool:
    def __init__(self) -> None:
        self.up = True

    async def fetchval(self, _query: str) -> Any:
        if not self.up:
            raise ConnectionRefusedError("database down")
        return 1


class _Database:
    def __init__(self) -> None:
        self.pool = _Pool()


async def test_the_database_counts_only_after_its_grace_period() -> None:
    database = _Database()
    now = [100.0]
    check = database_reachable(database, grace_seconds=15, clock=lambda: now[0])  # type: ignore[arg-type]
    assert await check.probe()
    database.pool.up = False
    now[0] += 14
    assert await check.probe()  # within the grace
    now[0] += 2
    assert not await check.probe()
    database.pool.up = True
    assert await check.probe()
