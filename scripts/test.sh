#!/usr/bin/env bash
# The whole test suite, from a fresh clone: set-up, lint, type check, tests on LiteRT,
# then the runtime tests again on tflite-runtime with NumPy 1.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh main
.venv/bin/ruff check edge_agent tests scripts
.venv/bin/ruff format --check edge_agent tests scripts
.venv/bin/mypy edge_agent
scripts/check_unit.sh  # the systemd unit: systemd-analyze verify + security score
scripts/check_wheel.sh  # the wheel alone: config init + run, and a fleet-only install
.venv/bin/python -m pytest -q "$@"

if python3 -c 'import sys; sys.exit(sys.version_info >= (3, 12))'; then
  scripts/setup.sh legacy
  EDGE_AGENT_TEST_BACKEND=tflite-runtime .venv-legacy/bin/python -m pytest -q -m runtime "$@"
else
  echo "tflite-runtime has no wheel for this Python; legacy runtime tests not run" >&2
fi
