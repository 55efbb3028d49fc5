"""INVOICING_TOPIC_PREFIX: every topic name of a platform carries it (two
platforms share one Kafka cluster, `make up PLATFORMS=2`), the topics file
provisions the prefixed names, and no prefix leaves the contract's names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from invoicing_common import topics
from invoicing_common.kafka import admin as topic_admin

_SHOW = """
import json
from invoicing_common import topics
from invoicing_common.kafka import admin
print(json.dumps({
    "received": topics.RECEIVED, "directory": topics.DIRECTORY, "delivered": topics.DELIVERED,
    "all": list(topics.ALL_TOPICS), "compacted": list(topics.COMPACTED_TOPICS),
    "base": topics.base_name(topics.STATUS), "loaded": [s.name for s in admin.load()],
}))
"""


def _names(prefix: str | None) -> dict[str, Any]:
    """The topic names a fresh process sees with INVOICING_TOPIC_PREFIX set
    to ``prefix`` (None: unset); the module reads it once, at import."""
    env = {k: v for k, v in os.environ.items() if k != topics.ENV_PREFIX}
    if prefix is not None:
        env[topics.ENV_PREFIX] = prefix
    done = subprocess.run([sys.executable, "-c", _SHOW], env=env, capture_output=True, text=True, check=True)
    shown: dict[str, Any] = json.loads(done.stdout)
    return shown


def test_every_topic_carries_the_prefix_of_the_environment() -> None:
    names = _names("peer.")
    assert names["received"] == "peer.invoicing.invoice.received.v1"
    assert names["directory"] == "peer.invoicing.directory.entries.v1"
    assert names["delivered"] == "peer.invoicing.invoice.delivered.v1"
    assert all(name.startswith("peer.invoicing.") for name in names["all"])
    assert set(names["compacted"]) <= set(names["all"])
    assert names["base"] == "invoicing.invoice.status.v1"
    # The topics file provisions what the services use.
    assert set(names["loaded"]) == set(names["all"])


def test_without_a_prefix_the_names_are_the_contracts() -> None:
    for prefix in (None, ""):
        names = _names(prefix)
        assert names["received"] == "invoicing.invoice.received.v1"
        assert names["base"] == "invoicing.invoice.status.v1"
        assert set(names["loaded"]) == set(names["all"])


def test_base_name_takes_the_prefix_off_only() -> None:
    assert topics.base_name("peer.invoicing.invoice.dlq.v1", "peer.") == "invoicing.invoice.dlq.v1"
    assert topics.base_name("invoicing.invoice.dlq.v1", "peer.") == "invoicing.invoice.dlq.v1"
    assert topics.base_name("peer.invoicing.invoice.dlq.v1", "") == "peer.invoicing.invoice.dlq.v1"
    assert topics.prefixed("invoicing.invoice.dlq.v1", "peer.") == "peer.invoicing.invoice.dlq.v1"


def test_load_names_the_topics_of_the_prefix_it_is_given() -> None:
    plain = {spec.name: spec for spec in topic_admin.load(prefix="")}
    peer = {spec.name: spec for spec in topic_admin.load(prefix="peer.")}
    assert set(peer) == {f"peer.{name}" for name in plain}
    assert set(plain) == {topics.base_name(name) for name in topics.ALL_TOPICS}
    # Only the names change: partitions and configs are the file's.
    for name, spec in plain.items():
        assert peer[f"peer.{name}"].configs == spec.configs
        assert peer[f"peer.{name}"].partitions == spec.partitions
