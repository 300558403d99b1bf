#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine: installs what is missing, then
# lint (ruff), types (mypy), Prometheus rule checks (promtool) and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# A Debian system Python marks itself externally managed (PEP 668); this project installs into it
# on purpose (a fresh machine or CI), so say so.
export PIP_BREAK_SYSTEM_PACKAGES=1

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v promtool >/dev/null || need_apt+=(prometheus)
command -v wrk >/dev/null || need_apt+=(wrk)
python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
if ((${#need_apt[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi
# redis-server and prometheus start system services on install; the tests start their own.
(service redis-server stop || true) >/dev/null 2>&1
(service prometheus stop || true) >/dev/null 2>&1

python3 -m pip install -q --disable-pip-version-check -e '.[dev]'

echo "== ruff"; python3 -m ruff check proxy tests bench
echo "== mypy"; python3 -m mypy proxy
echo "== promtool"
promtool check rules deploy/prometheus/alerts.yaml
promtool test rules deploy/prometheus/alerts_test.yaml
echo "== pytest"
python3 -m pytest -p no:cacheprovider "$@"
