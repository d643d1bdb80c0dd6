#!/usr/bin/env bash
# One command from a fresh clone to a running demo: installs streamdetect into .venv, then runs
# `streamdetect demo` (embedded broker, generator, detector, metrics, live terminal view).
# Extra arguments go to `streamdetect demo` (e.g. --duration 60 --rate 2000).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[plot]'
exec .venv/bin/streamdetect demo "$@"
