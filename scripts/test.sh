#!/usr/bin/env bash
# Installs everything the test suite needs (Debian's prometheus for promtool and the scrape test,
# a virtual environment with the package and its test extras) and runs lint, types, rule tests and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq prometheus >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'

echo "== ruff";   .venv/bin/ruff check streamdetect tests benchmarks
echo "== mypy";   .venv/bin/mypy
echo "== promtool"
promtool check config deploy/prometheus/prometheus.yml
promtool check rules deploy/prometheus/rules/*.yml
promtool test rules deploy/prometheus/tests/*.yml
echo "== pytest"
.venv/bin/python -m pytest -q "$@"
