#!/usr/bin/env bash
# The demo from a fresh clone: sets up .venv and the cached real assets, then
# `edge-agent run` on configs/demo.toml: MediaPipe's BlazeFace face detector (a real,
# pretrained model) on a clip of real photos, each result a JSON line on stdout naming
# what it found. No camera or broker needed. Ctrl-C stops it. Extra arguments go to `run`
# (a later --config wins: `scripts/run.sh --config configs/agent.toml`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh main
exec .venv/bin/edge-agent run --config configs/demo.toml "$@"
