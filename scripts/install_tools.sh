#!/usr/bin/env bash
# The stock tools the docs and the tests use against the stack: kcat (Kafka)
# and kubectl (the manifest check) from the apt sources, grpcurl (gRPC) from the Go module proxy into
# .cache/bin. Idempotent: a tool already there is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
GRPCURL_VERSION="${GRPCURL_VERSION:-v1.9.3}"

if ! command -v kcat >/dev/null; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "[tools] installing kcat from Debian's packages"
    apt-get install -y -q kcat >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q kcat >/dev/null; }
  else
    echo "[tools] kcat is missing: install it (apt-get install kcat) for the Kafka examples and tests" >&2
  fi
fi

# kubectl renders the Kubernetes manifests (`kubectl kustomize`) for the
# check in `make lint`.
if ! command -v kubectl >/dev/null; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "[tools] installing kubectl from the apt sources"
    apt-get install -y -q kubectl >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q kubectl >/dev/null; }
  else
    echo "[tools] kubectl is missing: install it for the manifest check of make lint" >&2
  fi
fi

if [ ! -x .cache/bin/grpcurl ]; then
  if command -v go >/dev/null; then
    echo "[tools] installing grpcurl $GRPCURL_VERSION from the Go module proxy into .cache/bin"
    GOBIN="$PWD/.cache/bin" GOFLAGS=-mod=mod go install "github.com/fullstorydev/grpcurl/cmd/grpcurl@$GRPCURL_VERSION"
  else
    echo "[tools] go is missing: grpcurl cannot be installed into .cache/bin" >&2
  fi
fi
