#!/usr/bin/env bash
# Starts the proxy doing its main job on embedded defaults: a bundled in-memory demo cart
# service on :8081 with the proxy in front of it on :8080 (no Redis needed). Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import proxy.cli" 2>/dev/null || python3 -m pip install -q --disable-pip-version-check -e .
exec cart-link-proxy demo "$@"
