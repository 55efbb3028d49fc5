"""Topics are provisioned from a file, and the services create none: a
missing topic stops a service at start with a message that says what to do."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]

from invoicing_common import topics
from invoicing_common.kafka import MissingTopics, Record, StreamApp
from invoicing_common.kafka import admin as topic_admin
from invoicing_common.settings import ServiceSettings
from tests.support import ROOT, Stack

pytestmark = pytest.mark.stack

INVOICECTL = str(ROOT / ".venv" / "bin" / "invoicectl")


def _file(tmp_path: Path, names: list[str], partitions: int, retention: str) -> Path:
    lines = ["[defaults]", f"partitions = {partitions}", "replication_factor = 1", "[defaults.configs]",
             f'"retention.ms" = "{retention}"']  # fmt: skip
    lines += [f'[topics."{name}"]' for name in names]
    path = tmp_path / "topics.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
async def names(stack: Stack) -> AsyncIterator[list[str]]:
    run = uuid.uuid4().hex[:10]
    made = [f"test.topics.{run}.a", f"test.topics.{run}.b"]
    yield made
    admin = AIOKafkaAdminClient(**stack.kafka.kafka_client_kwargs())
    await admin.start()
    try:
        await admin.delete_topics(made)
    finally:
        await admin.close()


async def test_apply_creates_then_changes_only_what_differs(stack: Stack, names: list[str], tmp_path: Path) -> None:
    first = topic_admin.load(_file(tmp_path, names, 2, "3600000"))
    assert [s.action for s in await topic_admin.apply(stack.kafka, first)] == ["create", "create"]
    assert [s.action for s in await topic_admin.apply(stack.kafka, first, dry_run=True)] == ["unchanged"] * 2

    wider = topic_admin.load(_file(tmp_path, names, 3, "7200000"))
    planned = await topic_admin.apply(stack.kafka, wider, dry_run=True)
    assert {(s.action, s.detail) for s in planned if s.topic == names[0]} == {
        ("add partitions", "2 -> 3"),
        ("set configs", "retention.ms=7200000 (was 3600000)"),
    }
    # A dry run changed nothing.
    assert await topic_admin.apply(stack.kafka, wider, dry_run=True) == planned
    await topic_admin.apply(stack.kafka, wider)
    assert [s.action for s in await topic_admin.apply(stack.kafka, wider, dry_run=True)] == ["unchanged"] * 2

    # Fewer partitions cannot be had: said, not attempted.
    narrower = topic_admin.load(_file(tmp_path, names, 1, "7200000"))
    steps = await topic_admin.apply(stack.kafka, narrower)
    assert {s.action for s in steps} == {"cannot change"}
    assert "cannot remove partitions" in steps[0].detail


def test_the_stack_matches_its_topics_file_and_the_cli_says_so() -> None:
    env = dict(os.environ)
    done = subprocess.run(
        [INVOICECTL, "topics", "check", "--as-admin", "--partitions", env.get("TOPIC_PARTITIONS", "6"), "--json"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    steps = json.loads(done.stdout)
    assert {s["topic"] for s in steps} == set(topics.ALL_TOPICS)
    assert {s["action"] for s in steps} == {"unchanged"}
    # The DLQ keeps its letters 30 days, not the broker's default week.
    dlq = next(s for s in topic_admin.load() if s.name == topics.DLQ)
    assert dlq.configs["retention.ms"] == str(30 * 24 * 3600 * 1000)


async def test_a_service_whose_topic_is_missing_refuses_to_start(stack: Stack) -> None:
    absent = f"test.topics.{uuid.uuid4().hex[:10]}.absent"

    async def handler(_record: Record) -> None:
        return None

    app = StreamApp(f"test-missing-{uuid.uuid4().hex[:8]}", ServiceSettings(**stack.kafka_fields()))
    app.consume(absent, handler=handler)
    with pytest.raises(MissingTopics, match=f"{absent}.*invoicectl topics apply"):
        await app.start()
    await app.stop()
