"""Build the project's container images with podman, from Debian's packages.

No registry is reachable from these machines, so nothing starts ``FROM
python:…``: the base image is a Debian root file system made by
``mmdebstrap`` and imported into podman. It is rebuilt only when missing
(its tag names the package list, so changing the list makes a new one).

    .venv/bin/python scripts/images.py build [--only app|kafka|postgres|collector] [--force-base]
    .venv/bin/python scripts/images.py list

The app image is built from the repository root (.containerignore says what
it reads). The infrastructure images of the compose deployment
(deploy/compose/) are built from a context assembled under .cache/images/:
Kafka's jars resolved by Maven from Maven Central, and a collector binary
made on the host by the OpenTelemetry Collector Builder (Go).

Podman reads ``deploy/container/containers.conf`` (runc, cgroupfs, explicit
ulimits, host networking); ``make images`` sets CONTAINERS_CONF for it, and
so does this script when the variable is unset.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONTAINER_DIR = ROOT / "deploy" / "container"
CONTAINERS_CONF = CONTAINER_DIR / "containers.conf"
SUITE = "bookworm"
# What every image needs; each Containerfile adds its own packages with apt.
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HOST_PACKAGES = {"podman": "podman", "buildah": "buildah", "mmdebstrap": "mmdebstrap", "runc": "runc"}
CACHE = ROOT / ".cache"
# Build contexts of the infrastructure images (not the repository root).
CONTEXTS = CACHE / "images"
ENTRYPOINTS = ROOT / "deploy" / "compose" / "entrypoints"
# The OpenTelemetry Collector Builder manifest; the builder runs at the
# version the manifest's dist.version names (its components' version).
COLLECTOR_MANIFEST = CONTAINER_DIR / "collector" / "builder-config.yaml"
COLLECTOR_CACHE = CACHE / "otelcol"
COLLECTOR_BINARY = "otelcol-invoicing"
COLLECTOR_CONFIG = ROOT / "deploy" / "observability" / "otel-collector.yaml"


def say(message: str) -> None:
    print(f"[images] {message}", flush=True)


def base_tag() -> str:
    digest = hashlib.sha256(" ".join((SUITE, *BASE_PACKAGES)).encode()).hexdigest()[:10]
    return f"localhost/invoicing-base:{SUITE}-{digest}"


@dataclass(frozen=True)
class Image:
    name: str
    containerfile: Path
    description: str

    @property
    def repository(self) -> str:
        return f"localhost/{self.name}"


IMAGES = {
    "app": Image("invoicing", CONTAINER_DIR / "Containerfile", "the four services and invoicectl"),
    "kafka": Image("invoicing-kafka", CONTAINER_DIR / "Containerfile.kafka", "Apache Kafka (KRaft), for compose"),
    "postgres": Image("invoicing-postgres", CONTAINER_DIR / "Containerfile.postgres", "PostgreSQL 15, for compose"),
    "collector": Image(
        "invoicing-otelcol", CONTAINER_DIR / "Containerfile.collector", "OpenTelemetry collector, for compose"
    ),
}


def podman_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(CONTAINERS_CONF))
    return env


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, check=True, env=podman_env(), **kwargs)  # type: ignore[call-overload, no-any-return]


def ensure_host_tools() -> None:
    """podman, buildah, runc and mmdebstrap from Debian's packages (as root)."""
    missing = [package for command, package in HOST_PACKAGES.items() if shutil.which(command) is None]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SystemExit(f"missing {', '.join(missing)}: install them (apt-get install {' '.join(missing)})")
    say(f"installing {', '.join(missing)} from Debian's packages")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", *missing]
    if subprocess.run(install, env=env, stdout=subprocess.DEVNULL).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True, stdout=subprocess.DEVNULL)
        subprocess.run(install, env=env, check=True, stdout=subprocess.DEVNULL)


def image_exists(reference: str) -> bool:
    return subprocess.run(["podman", "image", "exists", reference], env=podman_env()).returncode == 0


def ensure_base(force: bool = False) -> str:
    tag = base_tag()
    if image_exists(tag) and not force:
        return tag
    say(f"building the base image {tag} with mmdebstrap ({', '.join(BASE_PACKAGES)})")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="invoicing-base-") as folder:
        rootfs = Path(folder) / "rootfs.tar"
        run(
            [
                "mmdebstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                # Documentation and translations are never read in a container.
                "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-include=/usr/share/doc/*/copyright",
                "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/locale/*",
                "--quiet", SUITE, str(rootfs),
            ],
        )  # fmt: skip
        run(
            ["podman", "import", "--quiet", "--change", f"ENV {PATH_ENV}", "--change", 'CMD ["/bin/bash"]',
             str(rootfs), tag],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
    say(f"base image {tag} built in {time.monotonic() - started:.0f} s")
    return tag


def revision() -> str:
    result = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def ca_bundle() -> Path | None:
    """The CA bundle this machine's pip trusts, if the network re-signs TLS:
    given to the build as a secret, so that pip inside it trusts it too."""
    for candidate in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def kafka_jars() -> Path:
    """The broker's jars from Maven Central (.cache/kafka/VERSION/), resolved
    once by the local stack's own resolver, so both use the same folder."""
    sys.path.insert(0, str(ROOT / "deploy" / "local"))
    import stack

    return stack.kafka_classpath()


def collector_version() -> str:
    """dist.version of the builder manifest: the builder's and every component's version."""
    in_dist = False
    for line in COLLECTOR_MANIFEST.read_text().splitlines():
        if not line.startswith(" "):
            in_dist = line.startswith("dist:")
        elif in_dist and line.strip().startswith("version:"):
            return "v" + line.split(":", 1)[1].strip().lstrip("v")
    raise SystemExit(f"{COLLECTOR_MANIFEST}: no dist.version")


def collector_binary() -> Path:
    """The collector built by the OpenTelemetry Collector Builder on the host
    (Go), into .cache/otelcol/build/; rebuilt when the manifest changes."""
    binary = COLLECTOR_CACHE / "build" / COLLECTOR_BINARY
    digest_file = COLLECTOR_CACHE / "manifest.sha256"
    digest = hashlib.sha256(COLLECTOR_MANIFEST.read_bytes()).hexdigest()
    if binary.exists() and digest_file.exists() and digest_file.read_text() == digest:
        return binary
    if shutil.which("go") is None:
        raise SystemExit("go is missing: the collector is built on the host with the OpenTelemetry Collector Builder")
    version = collector_version()
    builder = COLLECTOR_CACHE / "bin" / f"builder-{version}"
    env = {**os.environ, "CGO_ENABLED": "0"}
    if not builder.exists():
        say(f"installing the OpenTelemetry Collector Builder {version} (go install)")
        with tempfile.TemporaryDirectory(prefix="ocb-") as gobin:
            subprocess.run(
                ["go", "install", f"go.opentelemetry.io/collector/cmd/builder@{version}"],
                check=True, env={**env, "GOBIN": gobin},
            )  # fmt: skip
            builder.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(Path(gobin) / "builder", builder)
    say(f"building the collector with the OpenTelemetry Collector Builder {version} (Go; minutes on a cold cache)")
    started = time.monotonic()
    shutil.rmtree(COLLECTOR_CACHE / "build", ignore_errors=True)
    # The manifest's output_path (./build) is relative to the working directory.
    subprocess.run([str(builder), f"--config={COLLECTOR_MANIFEST}"], check=True, cwd=COLLECTOR_CACHE, env=env)
    digest_file.write_text(digest)
    say(f"collector built in {time.monotonic() - started:.0f} s")
    return binary


def _fresh_context(key: str) -> Path:
    context = CONTEXTS / key
    shutil.rmtree(context, ignore_errors=True)
    context.mkdir(parents=True)
    return context


def prepare_context(key: str) -> Path:
    """The build context of image ``key``: the repository root for the app,
    a folder under .cache/images/ holding just what the Containerfile copies
    for the others (so that the app's context stays small)."""
    if key == "kafka":
        context = _fresh_context(key)
        shutil.copytree(kafka_jars(), context / "libs", ignore=shutil.ignore_patterns(".complete"))
        shutil.copy2(ROOT / "deploy" / "kafka" / "Provision.java", context / "Provision.java")
        shutil.copy2(ENTRYPOINTS / "kafka.sh", context / "entrypoint.sh")
        shutil.copy2(ENTRYPOINTS / "kafka-log4j2.properties", context / "log4j2.properties")
        return context
    if key == "postgres":
        context = _fresh_context(key)
        shutil.copy2(ENTRYPOINTS / "postgres.sh", context / "entrypoint.sh")
        return context
    if key == "collector":
        binary = collector_binary()
        context = _fresh_context(key)
        shutil.copy2(binary, context / COLLECTOR_BINARY)
        shutil.copy2(COLLECTOR_CONFIG, context / "config.yaml")
        return context
    return ROOT


def build(image: Image, base: str, context: Path = ROOT) -> str:
    version = revision()
    bundle = ca_bundle()
    secret = ["--secret", f"id=pip-ca,src={bundle}"] if bundle else []
    say(f"building {image.repository}:{version} ({image.description})")
    started = time.monotonic()
    run(
        [
            "podman", "build", "--network", "host", "--layers", "--quiet",
            "-f", str(image.containerfile), *secret,
            "--build-arg", f"BASE={base}", "--build-arg", f"VERSION={version}", "--build-arg", f"REVISION={version}",
            "-t", f"{image.repository}:{version}", "-t", f"{image.repository}:latest",
            str(context),
        ],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    say(f"{image.repository}:{version} built in {time.monotonic() - started:.0f} s (also tagged :latest)")
    return f"{image.repository}:{version}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    build_cmd = sub.add_parser("build", help="build the images (the base first, when missing)")
    build_cmd.add_argument("--only", choices=sorted(IMAGES), action="append", help="build only these (repeatable)")
    build_cmd.add_argument("--force-base", action="store_true", help="rebuild the Debian base image")
    sub.add_parser("list", help="the project's images that exist locally")
    args = parser.parse_args(argv)
    ensure_host_tools()
    if args.command == "list":
        run(["podman", "images", "--filter", "reference=localhost/invoicing*"])
        return 0
    if not (ROOT / ".cache" / "artefacts" / "MANIFEST.json").is_file():
        raise SystemExit("the validation artefacts are missing: run `make install` first")
    base = ensure_base(force=args.force_base)
    for key in args.only or ["app"]:
        build(IMAGES[key], base, prepare_context(key))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
