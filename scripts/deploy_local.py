"""Run the four services as containers with `podman kube play`, against the
Kafka, PostgreSQL and Keycloak of the local stack, then push samples through.

    .venv/bin/python scripts/deploy_local.py deploy     (make deploy-local)
    .venv/bin/python scripts/deploy_local.py undeploy   (make undeploy-local)

`make deploy-local` first builds the images (`make images`) and starts the
stack's infrastructure only (`stack.py infra`). This script then:

1. stops the stack's own service processes, if any (the containers take
   their ports: the local overlay runs them with host networking);
2. renders `deploy/k8s/overlays/local` with `kubectl kustomize`, and fills in
   what only this machine knows (`localize`): the run folder's TLS and
   credential files as hostPath volumes, and each service's endpoints from
   `.run/services/NAME.env`;
3. plays it with `podman kube play` and waits for every service's health
   port to say SERVING;
4. submits run-unique copies of the samples (a fresh invoice number each
   run, so a stack that saw them before still processes them) and prints
   each one's final status. Exit status 1 if one does not end as expected.

Credential files are copied to `.run/deploy-local/files/`, readable by the
containers' user (10001) only: the stack's own copies stay root's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from scripts.images import podman_env  # noqa: E402

RUN = Path(os.environ.get("STACK_RUN_DIR", ROOT / ".run"))
DEPLOY_DIR = RUN / "deploy-local"
MANIFEST = DEPLOY_DIR / "manifest.yaml"
OVERLAY = ROOT / "deploy" / "k8s" / "overlays" / "local"
SERVICES = ("ingest", "validate", "route", "status")
CONTAINER_UID = 10001
# The label every object of deploy/k8s carries (its base's kustomization).
PART_OF = "app.kubernetes.io/part-of=invoicing"
HEALTH_TIMEOUT_SECONDS = 180.0
SAMPLE_TIMEOUT_SECONDS = 180.0

# What each sample must end as (the file's name: its final status code).
EXPECTED = {
    "ubl-invoice-valid.xml": 203,
    "ubl-creditnote-valid.xml": 203,
    "cii-invoice-valid.xml": 203,
    "ubl-invoice-with-attachment.xml": 203,
    "ubl-invoice-invalid-rules.xml": 213,
    "not-an-invoice.txt": 501,
}
FINAL_CODES = frozenset({203, 213, 501})
COPY_PREFIX = "deploy-local-"

# Keys of .run/services/NAME.env that name files on this machine: in the
# containers, the manifests' own paths (under /etc/invoicing) stand.
_FILE_KEYS = frozenset({"GRPC_TLS_CERT_FILE", "GRPC_TLS_KEY_FILE", "OIDC_CA_FILE", "STATUS_CA_FILE", "PGPASSFILE"})


def say(message: str) -> None:
    print(f"[deploy-local] {message}", flush=True)


def container_settings(name: str) -> dict[str, str]:
    """A service's environment for a container started by hand (make
    test-images, scripts/scale_out.py): the stack's endpoints and the
    manifests' in-container paths of the files `container_mounts` mounts."""
    own = read_env_file(RUN / "services" / f"{name}.env")
    env = {
        **container_env(own),
        "GRPC_TLS_CERT_FILE": "/etc/invoicing/tls/server.pem",
        "GRPC_TLS_KEY_FILE": "/etc/invoicing/tls/server.key",
        "OIDC_CA_FILE": "/etc/invoicing/tls/ca.pem",
        "KAFKA_SASL_PASSWORD_FILE": "/etc/invoicing/kafka/password",
        "PGPASSFILE": "/etc/invoicing/postgres/pgpass",
    }
    if "STATUS_CA_FILE" in own:
        env["STATUS_CA_FILE"] = "/etc/invoicing/tls/ca.pem"
    return env


def container_mounts(files: Path, name: str) -> list[tuple[Path, str]]:
    """(host folder, container folder), read-only: `prepare_files`' copies."""
    return [
        (files / "tls", "/etc/invoicing/tls"),
        (files / "kafka" / name, "/etc/invoicing/kafka"),
        (files / "postgres" / name, "/etc/invoicing/postgres"),
    ]


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


def container_env(own: Mapping[str, str]) -> dict[str, str]:
    """A service's settings from the stack, less the host's file paths."""
    return {k: v for k, v in own.items() if k not in _FILE_KEYS and not k.endswith("_PASSWORD_FILE")}


def localize(
    documents: Iterable[dict[str, Any]], files: Path, service_env: Mapping[str, Mapping[str, str]]
) -> list[dict[str, Any]]:
    """The rendered overlay, made to run on this machine: every volume the
    overlay leaves as a placeholder (hostPath under `/run/invoicing-local`)
    moves under `files`, and each service container's env takes the stack's
    endpoints for it (env entries win over the ConfigMap's envFrom)."""
    placeholder = "/run/invoicing-local"
    out: list[dict[str, Any]] = []
    set_here: set[str] = set()
    for doc in documents:
        if doc.get("kind") == "Deployment":
            spec = doc["spec"]["template"]["spec"]
            # podman names an emptyDir's volume after it, machine-wide: each
            # pod gets its own, as in Kubernetes.
            renamed: dict[str, str] = {}
            for volume in spec.get("volumes", []):
                host = volume.get("hostPath")
                if host and str(host.get("path", "")).startswith(placeholder):
                    host["path"] = str(files) + host["path"][len(placeholder) :]
                if "emptyDir" in volume:
                    renamed[volume["name"]] = volume["name"] = f"{doc['metadata']['name']}-{volume['name']}"
            for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
                for mount in container.get("volumeMounts", []):
                    mount["name"] = renamed.get(mount["name"], mount["name"])
            for container in spec.get("containers", []):
                own = service_env.get(container["name"])
                if own is None:
                    continue
                env = {e["name"]: e for e in container.get("env", [])}
                for key, value in container_env(own).items():
                    env[key] = {"name": key, "value": value}
                    set_here.add(key)
                container["env"] = list(env.values())
        out.append(doc)
    # podman lets envFrom win over env (Kubernetes does the opposite): a
    # shared setting that the containers set themselves leaves the ConfigMap.
    for doc in out:
        if doc.get("kind") == "ConfigMap" and str(doc["metadata"]["name"]).startswith("invoicing-config"):
            doc["data"] = {k: v for k, v in doc.get("data", {}).items() if k not in set_here}
    return out


def _copy_private(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    os.chown(target, CONTAINER_UID, CONTAINER_UID)
    target.chmod(0o400)


def prepare_files() -> Path:
    """The files the containers mount, owned by their user: the TLS server
    pair and CA, and each service's Kafka password and pgpass file."""
    files = DEPLOY_DIR / "files"
    shutil.rmtree(files, ignore_errors=True)
    tls = RUN / "tls"
    for name in ("server.pem", "server.key", "ca.pem"):
        _copy_private(tls / name, files / "tls" / name)
    for service in SERVICES:
        _copy_private(RUN / "secrets" / f"kafka-{service}", files / "kafka" / service / "password")
        _copy_private(RUN / "secrets" / f"pgpass-{service}", files / "postgres" / service / "pgpass")
    for folder in [files, *(p for p in files.rglob("*") if p.is_dir())]:
        os.chown(folder, CONTAINER_UID, CONTAINER_UID)
        folder.chmod(0o500)
    return files


def render() -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        raise SystemExit("kubectl is missing: install it (apt-get install kubectl) to render the overlay")
    text = subprocess.run(["kubectl", "kustomize", str(OVERLAY)], check=True, capture_output=True, text=True).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def stack(command: str) -> None:
    subprocess.run([sys.executable, str(ROOT / "deploy" / "local" / "stack.py"), command], check=True)


def health(port: int) -> str:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
        except grpc.RpcError:
            return "unreachable"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def containers() -> dict[str, str]:
    """Container name → state, for this deployment's pods."""
    listing = subprocess.run(
        ["podman", "ps", "-a", "--filter", "label=io.kubernetes.pod.name", "--format", "json"],
        env=podman_env(), check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return {c["Names"][0]: c["State"] for c in json.loads(listing or "[]")}


def wait_serving(service_env: Mapping[str, Mapping[str, str]]) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT_SECONDS
    pending = dict.fromkeys(SERVICES, "unreachable")
    while pending:
        for service in list(pending):
            pending[service] = health(int(service_env[service]["GRPC_HEALTH_PORT"]))
            if pending[service] == "SERVING":
                say(f"{service} SERVING (container, health port {service_env[service]['GRPC_HEALTH_PORT']})")
                del pending[service]
        exited = [name for name, state in containers().items() if state == "exited" and "-infra" not in name]
        if exited:
            for name in exited:
                logs = subprocess.run(["podman", "logs", "--tail", "20", name], env=podman_env(),
                                      capture_output=True, text=True)  # fmt: skip
                print(logs.stdout + logs.stderr, file=sys.stderr)
            raise SystemExit(f"container(s) stopped: {', '.join(exited)} (logs above)")
        if pending and time.monotonic() > deadline:
            raise SystemExit(f"not SERVING after {HEALTH_TIMEOUT_SECONDS:.0f} s: {pending}")
        if pending:
            time.sleep(1)


def fresh_samples(run_id: str) -> list[Path]:
    """Copies of the samples with a run-unique invoice number (BT-1): the
    pipeline refuses a number it has seen from the same seller."""
    from lxml import etree

    from invoicectl.bench.generator import TEMPLATE_SELLER_NAME, TEMPLATE_SELLER_SIREN, Seller, rewrite

    folder = DEPLOY_DIR / "samples"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    seller = Seller(TEMPLATE_SELLER_NAME, TEMPLATE_SELLER_SIREN)
    made = []
    for name in EXPECTED:
        source = ROOT / "samples" / name
        # A name of its own: `make run` looks the samples up by name.
        target = folder / f"{COPY_PREFIX}{name}"
        if name.endswith(".xml"):
            root = etree.fromstring(source.read_bytes(), parser)
            target.write_bytes(rewrite(root, f"DL-{run_id}-{name.split('.')[0]}", seller))
        else:
            target.write_bytes(source.read_bytes() + f"\nrun {run_id}\n".encode())
        made.append(target)
    return made


def cli(*args: str, env: Mapping[str, str]) -> str:
    return subprocess.run(
        [str(ROOT / ".venv" / "bin" / "invoicectl"), *args], env=dict(env), check=True, capture_output=True, text=True
    ).stdout


def push_samples() -> int:
    env = {**os.environ, **read_env_file_exports(RUN / "env")}
    cli("directory", "import", str(ROOT / "samples" / "directory.csv"), env=env)
    cli("directory", "import-services", str(ROOT / "samples" / "directory-services.csv"), env=env)
    run_id = time.strftime("%Y%m%d%H%M%S")
    files = fresh_samples(run_id)
    receipts = json.loads(cli("submit", "--json", *map(str, files), env=env))
    say(f"submitted {len(receipts)} samples (run {run_id}); waiting for their final statuses")
    deadline = time.monotonic() + SAMPLE_TIMEOUT_SECONDS
    final: dict[str, dict[str, Any]] = {}
    while len(final) < len(receipts) and time.monotonic() < deadline:
        for receipt in receipts:
            if receipt["invoice_id"] in final:
                continue
            state = json.loads(cli("status", receipt["invoice_id"], "--json", env=env))
            if state["status_code"] in FINAL_CODES:
                final[receipt["invoice_id"]] = state
        if len(final) < len(receipts):
            time.sleep(0.5)
    failed = 0
    for receipt in receipts:
        name = Path(receipt["file"]).name.removeprefix(COPY_PREFIX)
        state = final.get(receipt["invoice_id"])
        if state is None:
            print(f"  {name:34} {receipt['invoice_id']}  not final after {SAMPLE_TIMEOUT_SECONDS:.0f} s  FAILED")
            failed += 1
            continue
        ok = state["status_code"] == EXPECTED[name]
        failed += not ok
        reason = f"  {state['reason_code']}" if state.get("reason_code") else ""
        verdict = "ok" if ok else f"FAILED (expected {EXPECTED[name]})"
        print(f"  {name:34} {receipt['invoice_id']}  {state['status_code']} {state['status']}{reason}  {verdict}")
    return 1 if failed else 0


def read_env_file_exports(path: Path) -> dict[str, str]:
    """`.run/env` is shell: `export KEY='value'` lines."""
    values = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export ") :].partition("=")
            values[key] = value.strip("'")
    return values


def deploy() -> int:
    if not (RUN / "env").is_file():
        raise SystemExit("the stack's infrastructure is not up: run `make deploy-local` (it starts it)")
    stack("stop-services")
    if deployed_pods():
        undeploy()
    service_env = {s: read_env_file(RUN / "services" / f"{s}.env") for s in SERVICES}
    files = prepare_files()
    documents = localize(render(), files, service_env)
    DEPLOY_DIR.mkdir(parents=True, exist_ok=True)
    MANIFEST.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    say(f"playing {MANIFEST.relative_to(ROOT) if MANIFEST.is_relative_to(ROOT) else MANIFEST} with podman kube play")
    subprocess.run(["podman", "kube", "play", str(MANIFEST)], env=podman_env(), check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    wait_serving(service_env)
    return push_samples()


def deployed_pods() -> list[str]:
    listing = subprocess.run(
        ["podman", "pod", "ps", "--filter", f"label={PART_OF}", "--format", "{{.Name}}"],
        env=podman_env(), check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return listing.split()


def undeploy() -> int:
    """Every pod of this project's manifests, also what a failed play left.
    The stop timeout covers the services' drain (terminationGracePeriodSeconds)."""
    pods = deployed_pods()
    if pods:
        subprocess.run(["podman", "pod", "rm", "--force", "--ignore", "--time", "45", *pods], env=podman_env(),
                       check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        say(f"removed {', '.join(pods)}")
    else:
        say("nothing deployed")
    shutil.rmtree(DEPLOY_DIR, ignore_errors=True)
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("deploy", "undeploy"))
    args = parser.parse_args(argv)
    return deploy() if args.command == "deploy" else undeploy()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
