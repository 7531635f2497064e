#!/usr/bin/env bash
# The wheel on its own, as a user gets it: built from this tree with no warnings from the
# build backend, its metadata checked, installed in fresh virtual environments outside the
# checkout.
#   metadata: License-Expression, the project URLs, and NumPy < 2 (with an OpenCV that
#     supports it) wherever an extra installs tflite-runtime, on every machine; the `tflite`
#     extra is the `agent` one with the other runtime.
#   agent venv (edge-agent[agent]): `config init`, then `run` on the written config until it
#     has results, stopped by SIGTERM and again by SIGINT, each exiting 0; `results stats`.
#   fleet venv (edge-agent alone): `edge-fleet devices --help`, with no LiteRT, no
#     tflite-runtime and no OpenCV installed; `edge-agent run` there names the extra.
# pip may fetch from PyPI; its cache (~/.cache/pip) keeps a second run fast.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/edge-agent-wheel.XXXXXX")
agent_pid=""
cleanup() {
  if [ -n "$agent_pid" ]; then kill "$agent_pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "check_wheel: $*" >&2; exit 1; }
started=$SECONDS

# Build from a copy (tracked and new files, links kept), so build/ and *.egg-info never
# land in the checkout.
mkdir "$tmp/src"
git ls-files -z --cached --others --exclude-standard \
  | tar --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -xf - -C "$tmp/src"
# Verbose: -q would hide everything the build backend prints, warnings included.
if ! "$python" -m pip wheel -v --no-deps --disable-pip-version-check -w "$tmp/dist" "$tmp/src" \
    >"$tmp/build.log" 2>&1; then
  cat "$tmp/build.log" >&2
  fail "the wheel does not build"
fi
# The backend's warnings: Python warnings (SetuptoolsDeprecationWarning, SetuptoolsWarning,
# UserWarning...), setuptools' _DeprecatedConfig notices, and distutils' "warning:" lines,
# but the one PYTHONDONTWRITEBYTECODE=1 causes. pip's own "WARNING:" lines (running as root,
# an index folder it skips) are about this machine, not the project: not counted.
warnings=$(grep -nE '[A-Za-z]Warning\b|_DeprecatedConfig|^[[:space:]]*warning:' "$tmp/build.log" \
  | grep -v 'byte-compiling is disabled' || true)
if [ -n "$warnings" ]; then
  echo "$warnings" >&2
  fail "the wheel builds with warnings (above; the whole build log: pip wheel -v)"
fi
wheel=$(echo "$tmp"/dist/edge_agent-*.whl)
[ -f "$wheel" ] || fail "no wheel in $tmp/dist"
echo "wheel: $(basename "$wheel"), $(du -k "$wheel" | cut -f1) kB" >&2
# Every file of the package in the tree (links followed) is in it, but the checkout's demo
# config, which runs what scripts/setup.sh lays out in var/demo.
missing=$("$python" - "$wheel" "$tmp/src" <<'PY'
import os, sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
for folder, dirs, files in os.walk(os.path.join(sys.argv[2], "edge_agent"), followlinks=True):
    dirs[:] = [d for d in dirs if d != "__pycache__"]
    for name in files:
        rel = os.path.relpath(os.path.join(folder, name), sys.argv[2])
        if rel not in names and rel != "edge_agent/data/configs/demo.toml":
            print(rel)
PY
)
[ -z "$missing" ] || fail "left out of the wheel (package-data in pyproject.toml): $missing"
"$python" scripts/check_wheel_metadata.py "$wheel" || fail "the wheel's metadata (above)"

# Nothing here may reach the checkout: run from the temporary folder, with its own homes.
cd "$tmp"
export XDG_CONFIG_HOME=$tmp/home/config XDG_STATE_HOME=$tmp/home/state
unset EDGE_AGENT_CONFIG PYTHONPATH

"$python" -m venv agent
agent/bin/python -m pip install -q --disable-pip-version-check "$wheel[agent]"
agent/bin/edge-agent config init "$tmp/conf/agent.toml" --state-dir "$tmp/state" >/dev/null
agent/bin/edge-agent config validate "$tmp/conf/agent.toml" >/dev/null
if [ ! -e /etc/edge-agent/agent.toml ]; then
  # No config anywhere: one line saying how to make one, exit 78.
  code=0
  agent/bin/edge-agent run 2>"$tmp/none.log" || code=$?
  [ "$code" = 78 ] && grep -q "edge-agent config init" "$tmp/none.log" \
    || { cat "$tmp/none.log" >&2; fail "run with no config: exit $code"; }
fi

# Runs until a status line counts results, then stops on the signal given, exit 0.
run_until_results() {
  local signal=$1 log="$tmp/run-$1.log" code=0
  agent/bin/edge-agent run --config "$tmp/conf/agent.toml" 2>"$log" &
  agent_pid=$!
  for _ in $(seq 300); do
    grep -qE "boxes: .* [1-9][0-9]* results" "$log" && break
    kill -0 "$agent_pid" 2>/dev/null || break
    sleep 0.1
  done
  grep -qE "boxes: .* [1-9][0-9]* results" "$log" || { cat "$log" >&2; fail "run: no results"; }
  kill "-$signal" "$agent_pid"
  wait "$agent_pid" || code=$?
  agent_pid=""
  [ "$code" = 0 ] || { cat "$log" >&2; fail "run: exit $code on SIG$signal"; }
}
run_until_results TERM
run_until_results INT
agent/bin/edge-agent results stats --config "$tmp/conf/agent.toml" --json \
  | grep -qE '"count": [1-9]' || fail "results stats: no results in the outbox"

"$python" -m venv fleet
fleet/bin/python -m pip install -q --disable-pip-version-check "$wheel"
fleet/bin/edge-fleet devices --help >/dev/null
heavy=$(fleet/bin/python -m pip list --disable-pip-version-check --format=freeze 2>/dev/null \
  | grep -iE '^(ai-edge-litert|tflite-runtime|opencv-[a-z-]+)==' || true)
[ -z "$heavy" ] || fail "the fleet-only install pulled in: $heavy"
if fleet/bin/python -c 'import cv2' 2>/dev/null; then fail "cv2 importable in the fleet venv"; fi
# The agent's commands there: one line naming the extra, exit 2.
code=0
fleet/bin/edge-agent run 2>"$tmp/lean.log" || code=$?
[ "$code" = 2 ] && [ "$(wc -l <"$tmp/lean.log")" = 1 ] && grep -q "edge-agent\[agent\]" "$tmp/lean.log" \
  || { cat "$tmp/lean.log" >&2; fail "edge-agent run without the agent extra: exit $code"; }

echo "check_wheel: ok in $((SECONDS - started)) s" >&2
