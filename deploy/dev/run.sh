#!/usr/bin/env bash
# `make run`: make Docker and the sandbox image available when possible, then
# start the local stack, push and run examples/hello.py once, and keep serving.
set -euo pipefail
cd "$(dirname "$0")/../.."

if bash deploy/docker/install-docker.sh; then
  if ! bash deploy/sandbox/build-image.sh; then
    echo "WARNING: sandbox image build failed; runs will use the local runner (NOT sandboxed)" >&2
  fi
else
  echo "WARNING: no Docker engine; runs will use the local runner (NOT sandboxed)" >&2
fi

exec .venv/bin/runbox up --demo "$@"
