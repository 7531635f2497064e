#!/usr/bin/env bash
# Runs the agent on its shipped default from a fresh clone: sets up .venv, then
# `edge-agent run` on configs/agent.toml (a synthetic camera into the shipped detector and
# classifier; no camera or broker needed). Ctrl-C stops it. Extra arguments go to `run`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh main
exec .venv/bin/edge-agent run "$@"
