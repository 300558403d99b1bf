#!/usr/bin/env bash
# Starts the proxy doing its main job on embedded defaults: a bundled in-memory demo cart
# service on :8081 with the proxy in front of it on :8080 (no Redis needed). Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
# A Debian system Python marks itself externally managed (PEP 668); this project installs into it
# on purpose (a fresh machine or CI), so say so.
export PIP_BREAK_SYSTEM_PACKAGES=1
if ! python3 -m pip --version >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip
fi
if ! command -v cart-link-proxy >/dev/null || ! python3 -c "import proxy.cli" 2>/dev/null; then
    python3 -m pip install -q --disable-pip-version-check -e .
fi
exec cart-link-proxy demo "$@"
