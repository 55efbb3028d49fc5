"""scripts/deploy_local.py: the rendered local overlay made to run on this
machine (hostPath placeholders, the stack's endpoints, podman's quirks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scripts.deploy_local import container_env, localize


def rendered() -> list[dict[str, Any]]:
    return [
        {
            "kind": "ConfigMap",
            "metadata": {"name": "invoicing-config-abc123"},
            "data": {"KAFKA_BOOTSTRAP_SERVERS": "kafka:9092", "PGPASSFILE": "/etc/invoicing/postgres/pgpass"},
        },
        {
            "kind": "Deployment",
            "metadata": {"name": "ingest"},
            "spec": {
                "template": {
                    "spec": {
                        "containers": [
                            {
                                "name": "ingest",
                                "env": [{"name": "GRPC_PORT", "value": "17001"}],
                                "volumeMounts": [
                                    {"name": "tls", "mountPath": "/etc/invoicing/tls"},
                                    {"name": "tmp", "mountPath": "/tmp"},
                                ],
                            }
                        ],
                        "volumes": [
                            {"name": "tls", "hostPath": {"path": "/run/invoicing-local/tls", "type": "Directory"}},
                            {"name": "tmp", "emptyDir": {}},
                        ],
                    }
                }
            },
        },
    ]


STACK_ENV = {
    "ingest": {
        "GRPC_PORT": "17001",
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:19092",
        "DATABASE_URL": "postgresql://ingest@127.0.0.1:15432/invoicing",
        "GRPC_TLS_CERT_FILE": "/home/someone/.run/tls/server.pem",
        "KAFKA_SASL_PASSWORD_FILE": "/home/someone/.run/secrets/kafka-ingest",
        "PGPASSFILE": "/home/someone/.run/secrets/pgpass-ingest",
    }
}


def test_host_file_paths_never_reach_the_containers() -> None:
    kept = container_env(STACK_ENV["ingest"])
    assert set(kept) == {"GRPC_PORT", "KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"}


def test_placeholders_move_under_the_files_folder() -> None:
    docs = localize(rendered(), Path("/srv/run/deploy-local/files"), STACK_ENV)
    volumes = docs[1]["spec"]["template"]["spec"]["volumes"]
    assert volumes[0]["hostPath"]["path"] == "/srv/run/deploy-local/files/tls"


def test_each_pod_gets_its_own_empty_dir_volume() -> None:
    # podman names an emptyDir volume machine-wide: without the prefix every
    # pod would share one /tmp.
    docs = localize(rendered(), Path("/f"), STACK_ENV)
    spec = docs[1]["spec"]["template"]["spec"]
    assert spec["volumes"][1]["name"] == "ingest-tmp"
    assert spec["containers"][0]["volumeMounts"][1]["name"] == "ingest-tmp"
    assert spec["containers"][0]["volumeMounts"][0]["name"] == "tls"


def test_stack_endpoints_win_and_leave_the_config_map() -> None:
    docs = localize(rendered(), Path("/f"), STACK_ENV)
    env = {e["name"]: e["value"] for e in docs[1]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "127.0.0.1:19092"
    assert env["DATABASE_URL"].endswith("@127.0.0.1:15432/invoicing")
    # podman lets envFrom override env: the shared key must not be in both.
    assert "KAFKA_BOOTSTRAP_SERVERS" not in docs[0]["data"]
    assert docs[0]["data"]["PGPASSFILE"] == "/etc/invoicing/postgres/pgpass"


def test_containers_of_unknown_services_are_left_alone() -> None:
    docs = localize(rendered(), Path("/f"), {})
    env = docs[1]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env == [{"name": "GRPC_PORT", "value": "17001"}]
