"""The short fault-injection subset that runs with the suite (`make chaos`
runs them all, tests/chaos/harness.py): an open-loop load while one
service is SIGKILLed, a validation worker is SIGKILLed, or poison records
arrive. Each run is then checked after the fact: nothing lost, no status
transition twice (history and status topic), every invoice final."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.chaos import harness
from tests.support import Stack

pytestmark = pytest.mark.stack

COUNT, RATE = 300, 30.0


@pytest.fixture
async def workdir() -> AsyncIterator[Path]:
    async with harness.workdir() as path:
        yield path


@pytest.mark.parametrize(
    ("name", "fault"),
    [
        ("kill status", harness.kill_service("status", times=1)),
        ("kill a validation worker", harness.kill_a_worker),
        ("poison records", harness.poison),
    ],
)
async def test_a_fault_under_load_loses_and_doubles_nothing(
    stack: Stack, workdir: Path, name: str, fault: harness.Fault
) -> None:
    outcome = await harness.scenario(name.replace(" ", "-"), fault, count=COUNT, rate=RATE, workdir=workdir)
    assert outcome.submitted == COUNT, outcome.as_json()
    assert outcome.lost == 0 and outcome.doubled == 0, outcome.as_json()
    assert outcome.final == outcome.submitted and not outcome.problems, outcome.as_json()
    assert outcome.recovery_seconds < 60, outcome.as_json()
