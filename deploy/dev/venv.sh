#!/usr/bin/env bash
# Create .venv (installing python3-venv with apt when Debian lacks it) and
# install Runbox with its dev tools into it.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PY:-python3}"
command -v python3.11 >/dev/null 2>&1 && PY=python3.11

if [ ! -x .venv/bin/python ]; then
  if ! "$PY" -m venv .venv 2>/dev/null; then
    rm -rf .venv
    echo "python venv support missing; installing python3-venv with apt" >&2
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -q
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv python3-pip
    "$PY" -m venv .venv
  fi
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]' -c deploy/dev/constraints.txt
