"""Render the Kubernetes manifests and check what every workload promises.

    .venv/bin/python scripts/check_manifests.py

Renders deploy/k8s/base, every overlay under deploy/k8s/overlays and the
base with each component under deploy/k8s/components, with `kubectl
kustomize` (the kubectl on PATH). In what they render, each workload's pod
must have:

- on every long-running container (Deployment, StatefulSet, DaemonSet):
  a readinessProbe and a livenessProbe;
- on every container, init containers included: cpu and memory requests
  and limits; securityContext allowPrivilegeEscalation false,
  readOnlyRootFilesystem true, capabilities.drop with ALL;
- at pod or container level (the container's value wins): runAsNonRoot
  true and seccompProfile RuntimeDefault.

And no Secret may carry data: secrets are created out of band. Prints one
line per problem and exits 1 when there is any (or a render fails).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"

# Where each kind keeps its pod spec.
POD_SPEC_PATHS: dict[str, tuple[str, ...]] = {
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
# Jobs run to completion: the kubelet's probes would only get in the way.
LONG_RUNNING = frozenset({"Deployment", "StatefulSet", "DaemonSet"})
RESOURCE_FIELDS = tuple(
    f"resources.{bound}.{resource}" for bound in ("requests", "limits") for resource in ("cpu", "memory")
)


class RenderError(Exception):
    """kubectl is missing, or it could not render a kustomization."""


@dataclass(frozen=True)
class Problem:
    kind: str
    name: str
    # Empty for problems of the object itself (a Secret with data).
    container: str
    missing: str

    def describe(self, source: str) -> str:
        where = f"{source}: {self.kind}/{self.name}"
        if self.container:
            where += f" container {self.container}"
        return f"{where}: missing {self.missing}"


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _at(document: Any, path: Iterable[str]) -> Any:
    for key in path:
        document = _mapping(document).get(key)
    return document


def _container_problems(
    kind: str, name: str, pod: Mapping[str, Any], container: Mapping[str, Any], probes: bool
) -> list[Problem]:
    label = str(container.get("name", "?"))
    missing: list[str] = []
    if probes:
        missing += [probe for probe in ("readinessProbe", "livenessProbe") if not container.get(probe)]
    missing += [field for field in RESOURCE_FIELDS if _at(container, field.split(".")) in (None, "")]
    security = _mapping(container.get("securityContext"))
    if security.get("allowPrivilegeEscalation") is not False:
        missing.append("securityContext.allowPrivilegeEscalation: false")
    if security.get("readOnlyRootFilesystem") is not True:
        missing.append("securityContext.readOnlyRootFilesystem: true")
    dropped = _at(security, ("capabilities", "drop"))
    if not isinstance(dropped, list) or "ALL" not in dropped:
        missing.append("securityContext.capabilities.drop: [ALL]")
    pod_security = _mapping(pod.get("securityContext"))
    # A container's own setting overrides the pod's, in either direction.
    non_root = security.get("runAsNonRoot", pod_security.get("runAsNonRoot"))
    if non_root is not True:
        missing.append("securityContext.runAsNonRoot: true (pod or container)")
    seccomp = _mapping(security.get("seccompProfile") or pod_security.get("seccompProfile"))
    if seccomp.get("type") != "RuntimeDefault":
        missing.append("securityContext.seccompProfile.type: RuntimeDefault (pod or container)")
    return [Problem(kind, name, label, field) for field in missing]


def check_documents(documents: Iterable[Any]) -> list[Problem]:
    """The problems in one rendered stream of manifests."""
    problems: list[Problem] = []
    for document in documents:
        doc = _mapping(document)
        kind = str(doc.get("kind", ""))
        name = str(_at(doc, ("metadata", "name")) or "?")
        if kind == "Secret" and (doc.get("data") or doc.get("stringData")):
            problems.append(Problem(kind, name, "", "nothing: Secrets are created out of band, not committed"))
        if kind not in POD_SPEC_PATHS:
            continue
        pod = _mapping(_at(doc, POD_SPEC_PATHS[kind]))
        containers = [_mapping(c) for c in pod.get("containers") or []]
        if not containers:
            problems.append(Problem(kind, name, "", "pod template containers"))
        for container in containers:
            problems += _container_problems(kind, name, pod, container, probes=kind in LONG_RUNNING)
        for container in pod.get("initContainers") or []:
            problems += _container_problems(kind, name, pod, _mapping(container), probes=False)
    return problems


def render(directory: Path) -> list[Any]:
    """The documents `kubectl kustomize directory` prints."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RenderError("kubectl not found on PATH: it renders the kustomizations")
    result = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RenderError(f"kubectl kustomize {directory} failed: {result.stderr.strip()}")
    return [d for d in yaml.safe_load_all(result.stdout) if d is not None]


def _has_kustomization(directory: Path) -> bool:
    return any((directory / f).is_file() for f in ("kustomization.yaml", "kustomization.yml", "Kustomization"))


def targets(k8s: Path = K8S) -> list[Path]:
    """The base, then every overlay."""
    overlays = k8s / "overlays"
    found = sorted(d for d in overlays.iterdir() if _has_kustomization(d)) if overlays.is_dir() else []
    return [k8s / "base", *found]


def components(k8s: Path = K8S) -> list[Path]:
    folder = k8s / "components"
    return sorted(d for d in folder.iterdir() if _has_kustomization(d)) if folder.is_dir() else []


def render_with_component(base: Path, component: Path) -> list[Any]:
    """A component cannot be rendered alone: the base with it, from a
    throw-away kustomization (relative paths: kustomize refuses absolute ones)."""
    with tempfile.TemporaryDirectory(prefix="check-manifests-") as folder:
        text = (
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
            f"resources:\n  - {os.path.relpath(base, folder)}\n"
            f"components:\n  - {os.path.relpath(component, folder)}\n"
        )
        (Path(folder) / "kustomization.yaml").write_text(text)
        return render(Path(folder))


def check_all(k8s: Path = K8S) -> list[str]:
    """One line per problem over every rendering, render failures included."""
    lines: list[str] = []
    renderings: list[tuple[str, Callable[[], list[Any]]]] = [
        (t.relative_to(k8s).as_posix(), partial(render, t)) for t in targets(k8s)
    ]
    renderings += [
        (f"base+{c.relative_to(k8s).as_posix()}", partial(render_with_component, k8s / "base", c))
        for c in components(k8s)
    ]
    for source, rendered in renderings:
        try:
            documents = rendered()
        except RenderError as exc:
            lines.append(f"{source}: {exc}")
            continue
        lines += [problem.describe(source) for problem in check_documents(documents)]
    return lines


def main() -> int:
    lines = check_all()
    for line in lines:
        print(line, file=sys.stderr)
    if lines:
        return 1
    print(f"manifests OK: {', '.join(t.relative_to(K8S).as_posix() for t in targets())} and components")
    return 0


if __name__ == "__main__":
    sys.exit(main())
