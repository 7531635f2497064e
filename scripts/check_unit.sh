#!/usr/bin/env bash
# Checks systemd/edge-agent.service the way systemd will see it on a device:
#   1. `systemd-analyze verify` on the unit as scripts/install.sh installs it;
#   2. `systemd-analyze security --offline=true`: prints the exposure score and fails above
#      MAX_EXPOSURE (default 2.5; 0 is fully locked down, 10 is wide open).
# Needs systemd-analyze (installed with apt-get if missing) and this checkout's .venv
# (scripts/setup.sh), whose edge-agent stands in for /opt/edge-agent/venv/bin/edge-agent.
#
# `verify` checks that ExecStart= names an executable file, and /opt/edge-agent does not exist
# on a development machine. So the unit is installed into a temporary root by
# scripts/install.sh (--venv-from .venv), and that root's /opt is bind-mounted over /opt in a
# private mount namespace (unshare -m, nothing changes outside it) while the installed,
# unmodified unit file is verified. Where no mount namespace can be made (an unprivileged
# container), a copy with ExecStart= pointing into the temporary root is verified instead,
# and the script says so.
set -euo pipefail
cd "$(dirname "$0")/.."

unit=systemd/edge-agent.service
max=${MAX_EXPOSURE:-2.5}

if ! command -v systemd-analyze >/dev/null; then
  sudo=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then sudo="sudo -n"; fi
  if command -v apt-get >/dev/null; then
    echo "installing systemd (for systemd-analyze) ..." >&2
    { $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
        && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd; } \
      >/dev/null 2>&1 || true
  fi
  command -v systemd-analyze >/dev/null \
    || { echo "check_unit.sh: systemd-analyze is missing and could not be installed" >&2; exit 1; }
fi
[ -x .venv/bin/edge-agent ] \
  || { echo "check_unit.sh: no .venv/bin/edge-agent; run scripts/setup.sh first" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
scripts/install.sh --root "$tmp/root" --venv-from .venv >"$tmp/install.log" 2>&1 \
  || { cat "$tmp/install.log" >&2; echo "check_unit.sh: install.sh --root failed" >&2; exit 1; }
installed=$tmp/root/etc/systemd/system/edge-agent.service
cmp -s "$unit" "$installed" || { echo "check_unit.sh: installed unit differs from $unit" >&2; exit 1; }

# 1. verify
unshare_cmd=(unshare -m)
[ "$(id -u)" -eq 0 ] || unshare_cmd=(unshare -r -m)
if "${unshare_cmd[@]}" true 2>/dev/null && [ -d /opt ]; then
  how="installed unit, $tmp/root/opt bind-mounted on /opt in a private mount namespace"
  # shellcheck disable=SC2016  # $1/$2 expand in the inner shell
  verify=("${unshare_cmd[@]}" sh -c \
    'mount --bind "$1/opt" /opt && exec systemd-analyze verify "$2"' sh "$tmp/root" "$installed")
else
  how="a copy with ExecStart= under $tmp/root (no mount namespace here)"
  mkdir -p "$tmp/copy"
  sed "s|^ExecStart=/opt/|ExecStart=$tmp/root/opt/|" "$installed" >"$tmp/copy/edge-agent.service"
  verify=(systemd-analyze verify "$tmp/copy/edge-agent.service")
fi
if ! "${verify[@]}" >"$tmp/verify.log" 2>&1 || [ -s "$tmp/verify.log" ]; then
  # verify exits 0 on some warnings; any output at all is a finding
  cat "$tmp/verify.log" >&2
  echo "check_unit.sh: systemd-analyze verify $unit: FAILED ($how)" >&2
  exit 1
fi
echo "systemd-analyze verify $unit: ok ($how)"

# 2. security score
systemd-analyze security --offline=true --no-pager "$unit" >"$tmp/security.log" 2>&1 || true
score=$(sed -n 's/.*Overall exposure level for edge-agent\.service: \([0-9.]*\).*/\1/p' "$tmp/security.log")
if [ -z "$score" ]; then
  cat "$tmp/security.log" >&2
  echo "check_unit.sh: no exposure level from systemd-analyze security" >&2
  exit 1
fi
awk '/✗/ { printf "  accepted: %-42s %s\n", $2, $NF }' "$tmp/security.log"
echo "systemd-analyze security $unit: exposure $score (must be <= $max)"
if awk -v s="$score" -v m="$max" 'BEGIN { exit !(s > m) }'; then
  echo "check_unit.sh: exposure $score is above $max" >&2
  exit 1
fi
