"""Two platforms in the local stack (`make up PLATFORMS=2`): the Kafka ACLs
granted once per topic prefix, the registry files each platform reads,
and what platform B's services are configured with."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from invoicing_common.platforms import parse_registry

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "local"))

import kafka_security  # noqa: E402
from platform_pair import PEER, PeerEntry, platform_a, registry_text  # noqa: E402


def test_acls_are_granted_for_every_prefix() -> None:
    principals = kafka_security.load_principals()
    alone = kafka_security.acl_lines(principals)
    both = kafka_security.acl_lines(principals, ["", "peer."])
    assert len(both) == 2 * len(alone)
    assert set(alone) <= set(both)
    # Topics, consumer groups and prefixed patterns alike.
    for line in (
        "acl User:validate TOPIC LITERAL peer.invoicing.invoice.received.v1 READ",
        "acl User:validate GROUP LITERAL peer.invoicing-validate READ",
        "acl User:route GROUP LITERAL peer.invoicing-route-delivery READ",
        "acl User:status GROUP LITERAL peer.invoicing-status-exchange DESCRIBE",
        "acl User:operator TOPIC PREFIXED peer.invoicing. READ",
        "acl User:operator GROUP PREFIXED peer.operator- READ",
    ):
        assert line in both
    assert not any("peer." in line for line in alone)
    # A prefix given twice grants once.
    assert kafka_security.acl_lines(principals, ["", ""]) == alone


def test_each_registry_names_the_other_platform(tmp_path: Path) -> None:
    local = platform_a("local", "invoicing")
    text = registry_text(
        PeerEntry(
            platform=PEER,
            ingest="127.0.0.1:17011",
            exchange="127.0.0.1:17014",
            ca_file=tmp_path / "ca.pem",
            token_url="https://127.0.0.1:18443/realms/invoicing/protocol/openid-connect/token",
            client_id=local.client_id,
            client_secret_file=tmp_path / "keycloak-platform-local",
            caller_client_id=PEER.client_id,
        )
    )
    registry = parse_registry(text, "platforms-local.toml")
    peer = registry.get("peer")
    assert peer is not None
    assert (peer.ingest, peer.exchange) == ("127.0.0.1:17011", "127.0.0.1:17014")
    assert (peer.client_id, peer.caller_client_id) == ("platform-local", "platform-peer")
    assert peer.ca_file == str(tmp_path / "ca.pem")
    assert registry.calling("platform-peer") is peer


_SHOW = """
import json, sys
sys.path.insert(0, "deploy/local")
import stack
count = stack.platform_count()
values = stack.endpoints()
envs = {spec.name: stack.service_environment(spec, values) for spec in stack.stack_services(count)}
print(json.dumps({"count": count, "values": values, "envs": envs, "parts": list(stack.all_parts())}))
"""


def _stack(tmp_path: Path, platforms: str | None) -> dict[str, Any]:
    """What deploy/local/stack.py would give the services, computed in a
    fresh process over an empty run folder (nothing is started)."""
    env = {k: v for k in ("PATH", "HOME", "LANG") if (v := os.environ.get(k)) is not None}
    env["STACK_RUN_DIR"] = str(tmp_path / "run")
    if platforms is not None:
        env["PLATFORMS"] = platforms
    done = subprocess.run(
        [sys.executable, "-c", _SHOW], env=env, cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    )
    shown: dict[str, Any] = json.loads(done.stdout)
    return shown


def test_two_platforms_configure_platform_b_apart(tmp_path: Path) -> None:
    shown = _stack(tmp_path, "2")
    envs = shown["envs"]
    values = shown["values"]
    run = tmp_path / "run"
    assert shown["count"] == 2
    assert sorted(envs) == sorted(
        ["ingest", "validate", "route", "status", "peer-ingest", "peer-validate", "peer-route", "peer-status"]
    )
    validate = envs["peer-validate"]
    assert (validate["GRPC_PORT"], validate["METRICS_PORT"], validate["GRPC_HEALTH_PORT"]) == (
        "17012",
        "17112",
        "17212",
    )
    assert validate["PLATFORM_ID"] == "peer"
    assert validate["INVOICING_TOPIC_PREFIX"] == "peer."
    assert validate["OTEL_SERVICE_NAME"] == "peer.invoicing-validate"
    assert validate["DATABASE_URL"].endswith("/invoicing_peer")
    assert validate["KAFKA_SASL_USERNAME"] == "validate"
    assert validate["PLATFORMS_FILE"] == str(run / "platforms-peer.toml")
    assert envs["peer-ingest"]["STATUS_ADDRESS"] == "127.0.0.1:17014"
    ingest = envs["ingest"]
    assert ingest["PLATFORMS_FILE"] == str(run / "platforms-local.toml")
    assert ingest["DATABASE_URL"].endswith("/invoicing")
    assert "INVOICING_TOPIC_PREFIX" not in ingest and "OTEL_SERVICE_NAME" not in ingest
    assert values["PLATFORMS"] == "2"
    assert values["PEER_INGEST_ADDR"] == "127.0.0.1:17011"
    assert values["PEER_STATUS_ADDR"] == "127.0.0.1:17014"
    assert (values["PEER_PLATFORM_ID"], values["PEER_TOPIC_PREFIX"]) == ("peer", "peer.")
    assert values["PEER_DATABASE_URL"].endswith("/invoicing_peer")
    assert shown["parts"][-4:] == ["peer-ingest", "peer-validate", "peer-route", "peer-status"]


def test_one_platform_is_as_before(tmp_path: Path) -> None:
    shown = _stack(tmp_path, None)
    envs = shown["envs"]
    values = shown["values"]
    assert shown["count"] == 1
    assert sorted(envs) == ["ingest", "route", "status", "validate"]
    assert not any("PLATFORMS_FILE" in env or "INVOICING_TOPIC_PREFIX" in env for env in envs.values())
    assert not any(key.startswith("PEER_") for key in values) and "PLATFORMS" not in values
    assert not any(str(part).startswith("peer-") for part in shown["parts"])
