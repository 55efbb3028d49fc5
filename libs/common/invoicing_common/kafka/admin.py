"""Topics are provisioned from a declarative list, not created by the
services that use them.

``apply`` makes a cluster match the list (deploy/kafka/topics.toml): it
creates missing topics, adds partitions, and sets the configs the list
names. What it cannot change in place (fewer partitions, another
replication factor) it reports. ``missing`` is what a service checks at
start: a topic it needs that is absent, or that its principal may not
see, stops it with a message that says how to provision it.

The file lists the contract's base names; ``load`` puts the platform's
topic prefix in front of each (INVOICING_TOPIC_PREFIX, see
`invoicing_common.topics`), so one file provisions every platform that
shares a cluster.
"""

from __future__ import annotations

import asyncio
import os
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic  # type: ignore[import-untyped]
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType  # type: ignore[import-untyped]
from aiokafka.errors import TopicAlreadyExistsError  # type: ignore[import-untyped]

from invoicing_common import topics
from invoicing_common.settings import KafkaClientSettings

# The topics file of a checkout (deploy/kafka/topics.toml), found from here;
# an installed copy (the container image) names its own.
DEFAULT_FILE = Path(
    os.environ.get("INVOICING_TOPICS_FILE") or Path(__file__).resolve().parents[4] / "deploy" / "kafka" / "topics.toml"
)
_UNKNOWN_TOPIC = 3
_NOT_AUTHORIZED = 29


class TopicFileError(ValueError):
    pass


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    configs: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    topic: str
    action: Literal["create", "add partitions", "set configs", "unchanged", "cannot change"]
    detail: str = ""

    def as_json(self) -> dict[str, str]:
        return {"topic": self.topic, "action": self.action, "detail": self.detail}


def load(
    path: Path = DEFAULT_FILE,
    *,
    partitions: int | None = None,
    replication_factor: int | None = None,
    min_insync_replicas: int | None = None,
    prefix: str | None = None,
) -> list[TopicSpec]:
    """The topics of ``path``, named with ``prefix`` (None: this process's
    INVOICING_TOPIC_PREFIX, as `invoicing_common.topics` read it); the
    overrides replace the file's defaults (a topic's own values still win)."""
    name_prefix = topics.PREFIX if prefix is None else prefix
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise TopicFileError(f"{path}: {exc}") from None
    defaults = data.get("defaults", {})
    default_configs = {k: str(v) for k, v in defaults.get("configs", {}).items()}
    if min_insync_replicas is not None:
        default_configs["min.insync.replicas"] = str(min_insync_replicas)
    specs = []
    for name, topic in data.get("topics", {}).items():
        unknown = set(topic) - {"partitions", "replication_factor", "configs"}
        if unknown:
            raise TopicFileError(f"{path}: topic {name}: unknown key(s) {', '.join(sorted(unknown))}")
        specs.append(
            TopicSpec(
                name=topics.prefixed(name, name_prefix),
                partitions=int(topic.get("partitions", partitions or defaults.get("partitions", 1))),
                replication_factor=int(
                    topic.get("replication_factor", replication_factor or defaults.get("replication_factor", 1))
                ),
                configs={**default_configs, **{k: str(v) for k, v in topic.get("configs", {}).items()}},
            )
        )
    if not specs:
        raise TopicFileError(f'{path}: no [topics."NAME"] table')
    return specs


def _admin(kafka: KafkaClientSettings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**kafka.kafka_client_kwargs(), client_id="invoicing-topics")


_VISIBLE_WITHIN_SECONDS = 30.0


async def _existing(admin: AIOKafkaAdminClient, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Metadata of the topics of ``names`` that exist and may be described."""
    found = {}
    for topic in await admin.describe_topics(list(names)):
        if topic["error_code"] == 0:
            found[topic["topic"]] = topic
        elif topic["error_code"] not in (_UNKNOWN_TOPIC, _NOT_AUTHORIZED):
            raise RuntimeError(f"topic {topic['topic']}: metadata error {topic['error_code']}")
    return found


async def missing(kafka: KafkaClientSettings, names: Sequence[str]) -> list[str]:
    """The topics of ``names`` that do not exist, or that this principal may
    not describe (to it, they are the same)."""
    admin = _admin(kafka)
    await admin.start()
    try:
        present = await _existing(admin, names)
    finally:
        await admin.close()
    return sorted(set(names) - set(present))


async def _configs(admin: AIOKafkaAdminClient, names: Sequence[str]) -> dict[str, dict[str, str]]:
    if not names:
        return {}
    resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
    out: dict[str, dict[str, str]] = {}
    for response in await admin.describe_configs(resources):
        for resource in response.resources:
            error_code, _message, _type, name, entries = resource[:5]
            if error_code:
                raise RuntimeError(f"topic {name}: describing its configs failed (error {error_code})")
            out[name] = {entry[0]: entry[1] for entry in entries}
    return out


async def apply(kafka: KafkaClientSettings, specs: Sequence[TopicSpec], dry_run: bool = False) -> list[Step]:
    """Make the cluster match ``specs``; with ``dry_run``, only say what
    would change. Returns one step per topic (several for one that changes
    in several ways)."""
    admin = _admin(kafka)
    await admin.start()
    try:
        present = await _existing(admin, [s.name for s in specs])
        current = await _configs(admin, sorted(present))
        steps: list[Step] = []
        for spec in specs:
            steps += await _apply_one(admin, spec, present.get(spec.name), current.get(spec.name, {}), dry_run)
        return steps
    finally:
        await admin.close()


async def _apply_one(
    admin: AIOKafkaAdminClient,
    spec: TopicSpec,
    metadata: dict[str, Any] | None,
    configs: Mapping[str, str],
    dry_run: bool,
) -> list[Step]:
    if metadata is None:
        if not dry_run:
            await admin.create_topics(
                [NewTopic(spec.name, spec.partitions, spec.replication_factor, topic_configs=dict(spec.configs))]
            )
        detail = f"{spec.partitions} partitions, replication factor {spec.replication_factor}"
        return [Step(spec.name, "create", detail)]
    steps: list[Step] = []
    partitions = len(metadata["partitions"])
    replicas = len(metadata["partitions"][0]["replicas"]) if metadata["partitions"] else 0
    if partitions < spec.partitions:
        if not dry_run:
            await admin.create_partitions({spec.name: NewPartitions(spec.partitions)})
        steps.append(Step(spec.name, "add partitions", f"{partitions} -> {spec.partitions}"))
    elif partitions > spec.partitions:
        steps.append(Step(spec.name, "cannot change", f"{partitions} partitions; Kafka cannot remove partitions"))
    if replicas != spec.replication_factor:
        steps.append(
            Step(
                spec.name,
                "cannot change",
                f"replication factor {replicas}, listed {spec.replication_factor}: reassign its partitions",
            )
        )
    differing = {k: v for k, v in spec.configs.items() if configs.get(k) != v}
    if differing:
        if not dry_run:
            # AlterConfigs sets the whole set: the listed configs are the
            # topic's configs, anything set by hand returns to the default.
            await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, spec.name, dict(spec.configs))])
        detail = ", ".join(f"{k}={v} (was {configs.get(k)})" for k, v in sorted(differing.items()))
        steps.append(Step(spec.name, "set configs", detail))
    return steps or [Step(spec.name, "unchanged")]


async def ensure_topics(
    kafka: KafkaClientSettings, partitions: int, names: Sequence[str] = topics.ALL_TOPICS
) -> list[str]:
    """Create missing topics with the broker's defaults; returns the names
    created. For throw-away topics (tests, the bench's Kafka baseline); the
    platform's own are provisioned by ``apply`` from topics.toml."""
    admin = AIOKafkaAdminClient(**kafka.kafka_client_kwargs(), client_id="invoicing-bootstrap")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        created: list[str] = []
        for name in missing:
            config = {"max.message.bytes": str(topics.MAX_MESSAGE_BYTES)}
            if name in topics.COMPACTED_TOPICS:
                config["cleanup.policy"] = "compact"
            try:
                await admin.create_topics([NewTopic(name, partitions, 1, topic_configs=config)])
                created.append(name)
            except TopicAlreadyExistsError:
                pass
        # The controller answers before every broker has the new topics in
        # its metadata: a service started right after would find them
        # missing. Created means visible.
        deadline = time.monotonic() + _VISIBLE_WITHIN_SECONDS
        while created and len(await _existing(admin, created)) < len(created):
            if time.monotonic() > deadline:
                raise RuntimeError(f"topics {', '.join(created)} created but not visible within 30 s")
            await asyncio.sleep(0.1)  # polling the brokers' metadata, bounded by the deadline
        return created
    finally:
        await admin.close()


class MissingTopics(RuntimeError):
    """A service's topics are not all there: it cannot start."""


async def require_topics(kafka: KafkaClientSettings, names: Sequence[str], who: str) -> None:
    """Stop the start of ``who`` unless every topic of ``names`` exists (and
    its principal may see it). Topics are provisioned, never created by the
    services: deploy/kafka/topics.toml, `invoicectl topics apply`."""
    absent = await missing(kafka, names)
    if absent:
        raise MissingTopics(
            f"{who}: topic(s) {', '.join(absent)} missing, or not readable by Kafka principal "
            f"{kafka.kafka_sasl_username or '(anonymous)'}; provision them with `invoicectl topics apply` "
            "(deploy/kafka/topics.toml) and check the ACLs (deploy/kafka/principals.toml)"
        )
