#!/usr/bin/env bash
# Installs Debian's prometheus package (the prometheus server and promtool) for the rule
# tests and the scrape e2e test. Idempotent: does nothing when both are on PATH.
# The package's postinst would start a prometheus daemon on :9090; a policy-rc.d that
# refuses every service start keeps it from doing so (and is removed again if we made it).
set -euo pipefail
if command -v promtool >/dev/null && command -v prometheus >/dev/null; then
    echo "prometheus $(prometheus --version 2>&1 | head -1 | awk '{print $3}') already installed"
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
POLICY=/usr/sbin/policy-rc.d
made_policy=""
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
    $SUDO chmod +x "$POLICY"
    made_policy=1
fi
trap '[ -n "$made_policy" ] && $SUDO rm -f "$POLICY"' EXIT
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus \
    || { $SUDO apt-get update -q && $SUDO env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends prometheus; }
promtool --version | head -1
