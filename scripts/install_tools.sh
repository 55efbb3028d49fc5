#!/usr/bin/env bash
# The stock tools the docs and the tests use against the stack: kcat (Kafka)
# and kubectl (the manifest check) from the apt sources, grpcurl (gRPC) from the Go module proxy into
# .cache/bin. Idempotent: a tool already there is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
GRPCURL_VERSION="${GRPCURL_VERSION:-v1.9.3}"

# apt_tool COMMAND WHAT-FOR: the package of that name, as root, when missing.
apt_tool() {
  command -v "$1" >/dev/null && return 0
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "[tools] installing $1 from the apt sources"
    apt-get install -y -q "$1" >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q "$1" >/dev/null; }
  else
    echo "[tools] $1 is missing: install it (apt-get install $1) for $2" >&2
  fi
}

apt_tool kcat "the Kafka examples and tests"
# kubectl renders the Kubernetes manifests (kubectl kustomize) for make lint's check.
apt_tool kubectl "the manifest check of make lint"

if [ ! -x .cache/bin/grpcurl ]; then
  if command -v go >/dev/null; then
    echo "[tools] installing grpcurl $GRPCURL_VERSION from the Go module proxy into .cache/bin"
    GOBIN="$PWD/.cache/bin" GOFLAGS=-mod=mod go install "github.com/fullstorydev/grpcurl/cmd/grpcurl@$GRPCURL_VERSION"
  else
    echo "[tools] go is missing: grpcurl cannot be installed into .cache/bin" >&2
  fi
fi
