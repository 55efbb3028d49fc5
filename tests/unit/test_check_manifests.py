"""scripts/check_manifests.py: what it reports, and that the real manifests pass."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.support import load_script

cm = load_script("check_manifests")

HARDENED = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}
RESOURCES = {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "128Mi"}}


def deployment() -> dict[str, Any]:
    container = {
        "name": "app",
        "image": "localhost/invoicing:latest",
        "readinessProbe": {"grpc": {"port": 17201}},
        "livenessProbe": {"grpc": {"port": 17201}},
        "resources": copy.deepcopy(RESOURCES),
        "securityContext": copy.deepcopy(HARDENED),
    }
    init = {"name": "init", "resources": copy.deepcopy(RESOURCES), "securityContext": copy.deepcopy(HARDENED)}
    pod = {
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
        "initContainers": [init],
        "containers": [container],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"template": {"spec": pod}},
    }


def job() -> dict[str, Any]:
    pod = deployment()["spec"]["template"]["spec"]
    for container in pod["containers"]:
        del container["readinessProbe"], container["livenessProbe"]
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "once"}, "spec": {"template": {"spec": pod}}}


def pod_of(doc: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = doc["spec"]["template"]["spec"]
    return pod


def missing(doc: dict[str, Any]) -> list[str]:
    return [p.missing for p in cm.check_documents([doc])]


def test_a_hardened_deployment_and_job_pass() -> None:
    assert cm.check_documents([deployment(), job(), None, {"kind": "Service", "metadata": {"name": "web"}}]) == []


@pytest.mark.parametrize("probe", ["readinessProbe", "livenessProbe"])
def test_a_missing_probe_is_reported_for_deployments_only(probe: str) -> None:
    doc = deployment()
    del pod_of(doc)["containers"][0][probe]
    assert cm.check_documents([doc]) == [cm.Problem("Deployment", "web", "app", probe)]
    assert missing(job()) == []


@pytest.mark.parametrize(("bound", "resource"), [(b, r) for b in ("requests", "limits") for r in ("cpu", "memory")])
def test_each_missing_resource_is_reported(bound: str, resource: str) -> None:
    doc = deployment()
    del pod_of(doc)["containers"][0]["resources"][bound][resource]
    assert missing(doc) == [f"resources.{bound}.{resource}"]


def test_init_containers_need_resources_and_hardening_too() -> None:
    doc = deployment()
    init = pod_of(doc)["initContainers"][0]
    del init["resources"], init["securityContext"]
    problems = cm.check_documents([doc])
    assert {p.container for p in problems} == {"init"}
    assert len(problems) == 7  # four resources, three container-level settings


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("allowPrivilegeEscalation", None, "securityContext.allowPrivilegeEscalation: false"),
        ("allowPrivilegeEscalation", True, "securityContext.allowPrivilegeEscalation: false"),
        ("readOnlyRootFilesystem", None, "securityContext.readOnlyRootFilesystem: true"),
        ("readOnlyRootFilesystem", False, "securityContext.readOnlyRootFilesystem: true"),
        ("capabilities", None, "securityContext.capabilities.drop: [ALL]"),
        ("capabilities", {"drop": ["NET_RAW"]}, "securityContext.capabilities.drop: [ALL]"),
    ],
)
def test_container_security_settings_are_required(key: str, value: Any, expected: str) -> None:
    doc = deployment()
    security = pod_of(doc)["containers"][0]["securityContext"]
    if value is None:
        del security[key]
    else:
        security[key] = value
    assert missing(doc) == [expected]


def test_run_as_non_root_and_seccomp_may_sit_on_the_pod_or_the_container() -> None:
    doc = deployment()
    pod = pod_of(doc)
    pod_security = pod.pop("securityContext")
    assert set(missing(doc)) == {
        "securityContext.runAsNonRoot: true (pod or container)",
        "securityContext.seccompProfile.type: RuntimeDefault (pod or container)",
    }
    for container in pod["containers"] + pod["initContainers"]:
        container["securityContext"] |= {k: pod_security[k] for k in ("runAsNonRoot", "seccompProfile")}
    assert missing(doc) == []


def test_a_container_setting_overrides_the_pod() -> None:
    doc = deployment()
    security = pod_of(doc)["containers"][0]["securityContext"]
    security |= {"runAsNonRoot": False, "seccompProfile": {"type": "Unconfined"}}
    assert missing(doc) == [
        "securityContext.runAsNonRoot: true (pod or container)",
        "securityContext.seccompProfile.type: RuntimeDefault (pod or container)",
    ]


def test_a_secret_with_data_is_reported() -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "invoicing-tls"}, "data": {"k": "dg=="}}
    assert [(p.kind, p.name) for p in cm.check_documents([secret])] == [("Secret", "invoicing-tls")]
    assert cm.check_documents([{"kind": "Secret", "metadata": {"name": "empty"}}]) == []


def test_a_problem_line_names_source_kind_name_container_and_field() -> None:
    problem = cm.Problem("Deployment", "validate", "validate", "livenessProbe")
    assert problem.describe("overlays/production") == (
        "overlays/production: Deployment/validate container validate: missing livenessProbe"
    )


def test_the_real_manifests_render_and_pass() -> None:
    assert shutil.which("kubectl"), "kubectl must be on PATH: the manifest check renders with `kubectl kustomize`"
    assert cm.check_all() == []
    # Every overlay and component was rendered, not just the base.
    sources = [t.relative_to(cm.K8S).as_posix() for t in cm.targets()]
    assert "base" in sources
    assert "overlays/production" in sources
    assert [c.name for c in cm.components()] == ["keda"]


def test_the_rendered_base_holds_what_the_pipeline_needs() -> None:
    docs = cm.render(cm.K8S / "base")
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for service in ("ingest", "validate", "route", "status"):
        assert {("Deployment", service), ("Service", service), ("PodDisruptionBudget", service)} <= names
    assert ("Job", "topics-apply") in names
    assert ("HorizontalPodAutoscaler", "validate") in names
    assert ("Deployment", "otel-collector") in names
    assert not [d for d in docs if d["kind"] == "Secret"]
    with_keda = cm.render_with_component(cm.K8S / "base", cm.K8S / "components" / "keda")
    kinds = {d["kind"] for d in with_keda}
    assert "ScaledObject" in kinds
    assert "HorizontalPodAutoscaler" not in kinds


def test_a_render_failure_is_a_problem_line(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "kustomization.yaml").write_text("resources:\n  - missing.yaml\n")
    lines = cm.check_all(tmp_path)
    assert len(lines) == 1
    assert lines[0].startswith("base: kubectl kustomize")
