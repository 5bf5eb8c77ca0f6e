#!/usr/bin/env bash
# `make run`: make Docker and the sandbox image available when possible, then
# start the local stack, push and run examples/hello.py once, and keep serving.
# Arguments go to `runbox up` (make run RUN_ARGS="--var /tmp/rb --settings s.yaml").
set -euo pipefail
cd "$(dirname "$0")/../.."

allow_unsandboxed=0
for arg in "$@"; do
  [ "$arg" = "--allow-unsandboxed" ] && allow_unsandboxed=1
done

no_sandbox() {
  echo "ERROR: $1, so scripts cannot run in a sandbox." >&2
  if [ "$allow_unsandboxed" = 1 ]; then
    echo "WARNING: --allow-unsandboxed: python and shell runs will be plain processes of this user (NOT sandboxed)" >&2
    return 0
  fi
  echo "Fix that and run make run again, or run scripts unsandboxed (as plain processes of this" >&2
  echo "user, with this host's network and files):" >&2
  echo "  make run RUN_ARGS=--allow-unsandboxed" >&2
  exit 1
}

if bash deploy/docker/install-docker.sh; then
  bash deploy/sandbox/build-image.sh >/dev/null || no_sandbox "the sandbox image build failed"
else
  no_sandbox "no Docker engine could be installed or started"
fi

exec .venv/bin/runbox up --demo "$@"
