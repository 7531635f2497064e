#!/usr/bin/env bash
# A minimal Debian root that boots systemd as PID 1 in systemd-nspawn, for the real-systemd
# tests (tests/test_real_systemd.py). Built once with debootstrap and kept as a tarball
# outside the checkout; each test session unpacks a fresh copy.
#
#   scripts/nspawn_root.sh          print the tarball's path, building it first if missing
#   scripts/nspawn_root.sh --deps   only install systemd-container and debootstrap if missing
#   scripts/nspawn_root.sh --cached print the tarball's path if it is built, else exit 1;
#                                   installs and builds nothing (the tests' cheap check)
#
# Needs root. The Debian mirror is the one apt uses here (deb822 or one-line sources);
# EDGE_AGENT_DEBIAN_MIRROR overrides it. The cache folder is $XDG_CACHE_HOME/edge-agent
# (default ~/.cache/edge-agent); the tarball's name holds a hash of what goes into it, so
# changing the suite or the package list builds a new one.
set -euo pipefail

SUITE=bookworm
INCLUDE=systemd,systemd-sysv,dbus,python3,python3-venv
cache=${XDG_CACHE_HOME:-$HOME/.cache}/edge-agent

die() { echo "nspawn_root.sh: $*" >&2; exit 1; }

key=$(printf '%s\n' "$SUITE" "$INCLUDE" minbase | sha256sum | cut -c1-12)
tarball=$cache/nspawn-root-$key.tar
if [ "${1:-}" = --cached ]; then
  [ -f "$tarball" ] || exit 1
  echo "$tarball"
  exit 0
fi

[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, systemd-nspawn)"

deps() {
  local missing=()
  command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  [ ${#missing[@]} -gt 0 ] || return 0
  command -v apt-get >/dev/null || die "no apt-get to install ${missing[*]}"
  echo "nspawn_root.sh: installing ${missing[*]} ..." >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 || {
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
      || die "apt-get install ${missing[*]} failed"
  }
}

mirror() {
  if [ -n "${EDGE_AGENT_DEBIAN_MIRROR:-}" ]; then echo "$EDGE_AGENT_DEBIAN_MIRROR"; return; fi
  local found=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    # The first URIs: of a stanza whose suites are the plain ones (not -security).
    found=$(awk '
      /^URIs:/ { uri = $2 }
      /^Suites:/ { for (i = 2; i <= NF; i++) if ($i !~ /-security$/) ok = 1 }
      /^$/ { if (ok && uri != "") { print uri; exit } uri = ""; ok = 0 }
      END { if (ok && uri != "") print uri }' /etc/apt/sources.list.d/debian.sources | head -1)
  fi
  if [ -z "$found" ] && [ -f /etc/apt/sources.list ]; then
    found=$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++)
      if ($i ~ /^https?:/) { print $i; exit } }' /etc/apt/sources.list)
  fi
  echo "${found:-http://deb.debian.org/debian}"
}

deps
[ "${1:-}" != --deps ] || exit 0

if [ ! -f "$tarball" ]; then
  mkdir -p "$cache"
  work=$(mktemp -d "$cache/.nspawn-root.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  url=$(mirror)
  echo "nspawn_root.sh: debootstrap $SUITE from $url (about 1.5 min) ..." >&2
  debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$work/root" "$url" \
    >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
  # Keep the image small and quiet: no apt lists or caches.
  rm -rf "$work/root/var/cache/apt/archives"/*.deb "$work/root/var/lib/apt/lists"/*
  tar -C "$work/root" --numeric-owner -cf "$work/root.tar" .
  mv "$work/root.tar" "$tarball"
fi
echo "$tarball"
