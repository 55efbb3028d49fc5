"""pytest plugin for `make test-images`: the four services run from the
project's image, started by testcontainers-python through podman's
Docker-compatible API, and the end-to-end journeys run against them.

    .venv/bin/python deploy/local/stack.py test-images -- tests/e2e ...

The stack's Kafka, PostgreSQL and Keycloak stay processes (`stack.py
test-images` starts them without the services). The containers get the
same settings the stack gives its service processes (.run/services/NAME.env)
and the hardening of the Kubernetes manifests: user 10001, read-only root
file system, every capability dropped, no privilege escalation, host
networking (podman's containers.conf of this project).

podman's API socket is started here (`podman system service`) and stopped
by its pid at the end; Ryuk is off (podman has no Docker events socket for
it), so this plugin stops every container it started itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from scripts.deploy_local import (  # noqa: E402
    RUN,
    SERVICES,
    container_mounts,
    container_settings,
    health,
    prepare_files,
    read_env_file,
)
from scripts.images import podman_env  # noqa: E402

IMAGE = os.environ.get("INVOICING_IMAGE", "localhost/invoicing:latest")
SOCKET_TIMEOUT_SECONDS = 30.0
SERVING_TIMEOUT_SECONDS = 180.0


@contextmanager
def podman_socket() -> Iterator[str]:
    """`podman system service` on a private socket, for this session only."""
    folder = Path(tempfile.mkdtemp(prefix="invoicing-podman-"))
    url = f"unix://{folder / 'podman.sock'}"
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", url],
        env=podman_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import docker  # type: ignore[import-untyped]

        deadline = time.monotonic() + SOCKET_TIMEOUT_SECONDS
        while True:
            try:
                docker.DockerClient(base_url=url).ping()
                break
            except Exception:
                if service.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"podman's API socket did not answer on {url}") from None
                time.sleep(0.2)
        yield url
    finally:
        service.terminate()
        try:
            service.wait(timeout=15)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()
        (folder / "podman.sock").unlink(missing_ok=True)
        folder.rmdir()


def service_container(name: str, files: Path) -> object:
    from testcontainers.core.container import DockerContainer

    env = {
        **container_settings(name),
        # The container's own view of its CPUs, not the host's.
        **({"VALIDATE_WORKERS": "1"} if name == "validate" else {}),
    }
    container = (
        DockerContainer(IMAGE)
        .with_command(f"python -m invoicing_{name}")
        .with_name(f"invoicing-test-{name}")
        .with_envs(**env)
        .with_tmpfs_mount("/tmp", "size=64m")
    )
    for host, inside in container_mounts(files, name):
        container = container.with_volume_mapping(host, inside, "ro")
    return container.with_kwargs(
        network_mode="host",
        user="10001:10001",
        read_only=True,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
    )


def _wait_serving(containers: dict[str, object]) -> None:
    deadline = time.monotonic() + SERVING_TIMEOUT_SECONDS
    pending = {name: int(read_env_file(RUN / "services" / f"{name}.env")["GRPC_HEALTH_PORT"]) for name in containers}
    while pending:
        for name, port in list(pending.items()):
            if health(port) == "SERVING":
                del pending[name]
        for name in pending:
            wrapped = containers[name].get_wrapped_container()  # type: ignore[attr-defined]
            wrapped.reload()
            if wrapped.status == "exited":
                logs = wrapped.logs(tail=30).decode(errors="replace")
                raise RuntimeError(f"the {name} container stopped:\n{logs}")
        if pending and time.monotonic() > deadline:
            raise RuntimeError(f"not SERVING after {SERVING_TIMEOUT_SECONDS:.0f} s: {sorted(pending)}")
        if pending:
            time.sleep(0.5)


@pytest.fixture(scope="session", autouse=True)
def services_from_images() -> Iterator[dict[str, object]]:
    files = prepare_files()
    with podman_socket() as url:
        os.environ["DOCKER_HOST"] = url
        os.environ["TESTCONTAINERS_RYUK_DISABLED"] = "true"
        started: dict[str, object] = {}
        try:
            for name in SERVICES:
                started[name] = service_container(name, files).start()  # type: ignore[attr-defined]
            _wait_serving(started)
            for name, container in started.items():
                # The host's pid of the service's process: tests that read its
                # memory (Stack.service_pid) find it here.
                wrapped = container.get_wrapped_container()  # type: ignore[attr-defined]
                wrapped.reload()
                os.environ[f"INVOICING_{name.upper()}_PID"] = str(wrapped.attrs["State"]["Pid"])
            yield started
        finally:
            for container in started.values():
                container.stop()  # type: ignore[attr-defined]
