#!/usr/bin/env bash
# Installs edge-agent as a systemd service on a Debian-like device (Debian, Raspberry Pi OS,
# Ubuntu), or removes it again.
#
#   scripts/install.sh                     install (or update) and start the service
#   scripts/install.sh --uninstall         stop, disable, remove the unit and /opt/edge-agent
#   scripts/install.sh --uninstall --purge ... and the config, the state and the user too
#
# Options:
#   --root DIR            install into DIR as if it were / (an image, a test): nothing is
#                         started; the unit is enabled offline with `systemctl --root=DIR`
#   --source DIR          the edge-agent checkout to install from (default: this one)
#   --venv-from VENV      use an existing virtual environment (a symlink to it) instead of
#                         building /opt/edge-agent/venv (offline installs, tests)
#   --no-venv             leave the virtual environment out altogether (tests)
#
# What goes where (all under DIR with --root):
#   /opt/edge-agent/src       the package source; /opt/edge-agent/venv is built from it
#   /opt/edge-agent/models    the shipped models the default config uses
#   /opt/edge-agent/venv      python3 -m venv + pip install /opt/edge-agent/src
#   /etc/edge-agent/agent.toml  from configs/agent.toml with device paths, only if absent:
#                             an edited config is never overwritten
#   /etc/edge-agent/credentials/  root-only; mqtt-password, tls-key (see the unit)
#   /var/lib/edge-agent       the state (outbox, journals, model store)
#   /etc/systemd/system/edge-agent.service, enabled for multi-user.target
#   system user/group edge-agent
#
# Running it again converges: only what differs is changed, each change is printed, and a
# run with nothing to do says so ("no changes").
set -euo pipefail
umask 022

APP=edge-agent
OPT=/opt/edge-agent
ETC=/etc/edge-agent
STATE=/var/lib/edge-agent
UNIT=/etc/systemd/system/edge-agent.service
WANTS=/etc/systemd/system/multi-user.target.wants/edge-agent.service

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
die() { echo "install.sh: $*" >&2; exit 1; }
note() { echo "install.sh: note: $*" >&2; }

root=""
source_dir=""
action=install
purge=0
venv_mode=build
venv_from=""
while [ $# -gt 0 ]; do
  case "$1" in
    --root) [ $# -ge 2 ] || die "--root needs a folder"; root=$2; shift 2 ;;
    --root=*) root=${1#*=}; shift ;;
    --source) [ $# -ge 2 ] || die "--source needs a folder"; source_dir=$2; shift 2 ;;
    --source=*) source_dir=${1#*=}; shift ;;
    --venv-from) [ $# -ge 2 ] || die "--venv-from needs a folder"; venv_mode=from; venv_from=$2; shift 2 ;;
    --venv-from=*) venv_mode=from; venv_from=${1#*=}; shift ;;
    --no-venv) venv_mode=none; shift ;;
    --uninstall) action=uninstall; shift ;;
    --purge) purge=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "install.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
[ "$purge" = 0 ] || [ "$action" = uninstall ] || die "--purge goes with --uninstall"

offline=0
if [ -n "$root" ]; then
  offline=1
  mkdir -p "$root"
  root=$(cd "$root" && pwd -P)
  [ "$root" != / ] || root=""   # --root /: the real paths, still without starting anything
fi
if [ -z "$source_dir" ]; then
  source_dir=$(cd "$(dirname "$0")/.." && pwd -P)
else
  source_dir=$(cd "$source_dir" && pwd -P)
fi
is_root=0
[ "$(id -u)" -ne 0 ] || is_root=1
if [ "$offline" = 0 ] && [ "$is_root" = 0 ]; then
  die "run as root (sudo $0 ...), or give --root DIR to install into a folder"
fi

# --- helpers -------------------------------------------------------------------------------
changes=0
did() { changes=$((changes + 1)); echo "  $*"; }
p() { printf '%s%s' "$root" "$1"; }   # a device path inside the root

have_systemd() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null; }

# user:group of the service account as numbers, from the root's own /etc/passwd ("" if none)
account_ids() {
  [ -f "$(p /etc/passwd)" ] || return 0
  awk -F: -v u="$APP" '$1 == u { print $3 ":" $4 }' "$(p /etc/passwd)"
}

# ensure_dir PATH MODE [UID:GID]
ensure_dir() {
  local path=$1 mode=$2 owner=${3:-} target
  target=$(p "$path")
  if [ ! -d "$target" ]; then
    mkdir -p "$target"
    chmod "$mode" "$target"
    if [ -n "$owner" ] && [ "$is_root" = 1 ]; then chown "$owner" "$target"; fi
    did "created $path/ ($mode${owner:+ $owner})"
    return 0
  fi
  if [ "$(stat -c %a "$target")" != "${mode#0}" ]; then
    chmod "$mode" "$target"
    did "mode $mode on $path/"
  fi
  set_owner "$path" "$owner"
}

# set_owner PATH UID:GID (nothing when empty or when not running as root)
set_owner() {
  local path=$1 owner=$2 target
  [ -n "$owner" ] && [ "$is_root" = 1 ] || return 0
  target=$(p "$path")
  if [ "$(stat -c %u:%g "$target")" != "$owner" ]; then
    chown "$owner" "$target"
    did "owner $owner on $path"
  fi
}

# install_file SRC DEVICE_PATH MODE: copied only when the content differs
install_file() {
  local src=$1 path=$2 mode=$3 target
  target=$(p "$path")
  if [ -f "$target" ] && cmp -s "$src" "$target"; then
    if [ "$(stat -c %a "$target")" != "${mode#0}" ]; then
      chmod "$mode" "$target"
      did "mode $mode on $path"
    fi
    return 0
  fi
  local verb=installed
  [ ! -e "$target" ] || verb=updated
  mkdir -p "$(dirname "$target")"
  install -m "$mode" "$src" "$target"
  did "$verb $path"
}

# sync_tree SRC_DIR DEVICE_DIR [MAXDEPTH]: the files of SRC_DIR (no caches, no dot files;
# links followed: edge_agent/data links to configs/, systemd/ and a model, the package data
# the wheel built here needs), files no longer in SRC_DIR removed. A first copy is reported as one line, updates per file.
sync_tree() {
  local src=$1 path=$2 depth=${3:-64} rel target fresh=0 before
  local -A wanted=()
  target=$(p "$path")
  [ -d "$target" ] || fresh=1
  before=$changes
  while IFS= read -r -d '' rel; do
    rel=${rel#./}
    wanted[$rel]=1
    if [ "$fresh" = 1 ]; then
      mkdir -p "$(dirname "$target/$rel")"
      install -m 0644 "$src/$rel" "$target/$rel"
      changes=$((changes + 1))
    else
      install_file "$src/$rel" "$path/$rel" 0644
    fi
  done < <(cd "$src" && find -L . -mindepth 1 -maxdepth "$depth" \
    \( -name __pycache__ -o -name '*.egg-info' -o -name '.*' \) -prune \
    -o -type f ! -name '*.py[co]' -print0 | sort -z)
  if [ "$fresh" = 1 ]; then
    [ "$changes" = "$before" ] || echo "  installed $((changes - before)) file(s) in $path/"
    return 0
  fi
  while IFS= read -r -d '' rel; do
    rel=${rel#./}
    if [ -z "${wanted[$rel]:-}" ]; then
      rm -f "$target/$rel"
      did "removed $path/$rel"
    fi
  done < <(cd "$target" && find . -type f -print0 | sort -z)
  find "$target" -mindepth 1 -type d -empty -delete
}

# The default config with the device's paths: models from /opt/edge-agent/models, state in
# /var/lib/edge-agent, no JSON-lines copy (the outbox keeps every result; a file that only
# grows does not belong on an SD card).
render_config() {
  local out
  out=$(sed \
    -e 's|^state_dir = "\.\./var"|state_dir = "/var/lib/edge-agent"|' \
    -e 's|"\.\./models/|"/opt/edge-agent/models/|g' \
    -e 's|^jsonl = "\.\./var/results\.jsonl"|# jsonl = "/var/lib/edge-agent/results.jsonl"|' \
    "$source_dir/configs/agent.toml")
  if grep -n '"\.\./' <<<"$out" >&2; then
    die "configs/agent.toml: the relative path(s) above have no place on a device; update render_config"
  fi
  printf '%s\n' \
    "# Installed by scripts/install.sh from configs/agent.toml, with the device's paths." \
    "# Edit it freely: a reinstall never overwrites it. Apply: systemctl reload edge-agent." \
    "# Secrets: /etc/edge-agent/credentials/{mqtt-password,tls-key} (root, 0600), used as" \
    "# password_file = \"credential:mqtt-password\" and key_file = \"credential:tls-key\"." \
    "#" \
    "$out"
}

# The installed source as one hash (what the venv was built from), build leftovers aside.
src_hash() {
  (cd "$(p "$OPT/src")" && find . \( -name build -o -name '*.egg-info' \) -prune -o -type f -print0 \
    | sort -z | xargs -0 sha256sum) | sha256sum | cut -d' ' -f1
}

# --- install -------------------------------------------------------------------------------
ensure_user() {
  local passwd
  passwd=$(p /etc/passwd)
  if [ ! -f "$passwd" ]; then
    note "no $passwd: the system user $APP is not created (the unit runs as User=$APP)"
    return 0
  fi
  grep -q "^$APP:" "$passwd" && return 0
  [ "$is_root" = 1 ] || die "creating the system user $APP needs root"
  command -v useradd >/dev/null || die "useradd not found (Debian: apt-get install passwd)"
  local args=(--system --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin
    --comment "edge-agent inference daemon")
  if grep -q "^$APP:" "$(p /etc/group)" 2>/dev/null; then
    args+=(--gid "$APP")
  else
    args+=(--user-group)
  fi
  if [ -n "$root" ]; then
    useradd --root "$root" "${args[@]}" "$APP"
  else
    useradd "${args[@]}" "$APP"
  fi
  did "created system user and group $APP"
}

build_venv() {
  local venv=$OPT/venv
  case "$venv_mode" in
    none)
      note "--no-venv: $venv is not built (ExecStart needs $venv/bin/edge-agent)"
      ;;
    from)
      local from
      from=$(cd "$venv_from" && pwd -P) || die "--venv-from $venv_from: no such folder"
      [ -x "$from/bin/edge-agent" ] || die "--venv-from $from: no bin/edge-agent in it"
      if [ "$(readlink "$(p "$venv")" 2>/dev/null)" != "$from" ]; then
        rm -rf "$(p "$venv")"
        ln -s "$from" "$(p "$venv")"
        did "linked $venv -> $from"
      fi
      ;;
    build)
      local target want stamp
      target=$(p "$venv")
      stamp=$target/.edge-agent-src.sha256
      if [ -L "$target" ] || { [ -e "$target" ] && [ ! -x "$target/bin/python" ]; }; then
        rm -rf "$target"
      fi
      if [ ! -x "$target/bin/python" ]; then
        python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
          || die "edge-agent needs Python 3.10 or later (python3 is $(python3 -V 2>&1))"
        python3 -m venv "$target" \
          || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
        did "created $venv"
      fi
      want=$(src_hash)
      if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        # Dependencies as needed, then the package itself always (same version, new code).
        # With --root the venv lives at DIR/opt/...: usable for tests, not by a booted DIR.
        export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
        "$target/bin/python" -m pip install -q "$(p "$OPT/src")[agent]"
        "$target/bin/python" -m pip install -q --no-deps --force-reinstall "$(p "$OPT/src")"
        rm -rf "$(p "$OPT/src")/build" "$(p "$OPT/src")"/*.egg-info
        echo "$want" >"$stamp"
        did "installed the edge-agent package into $venv"
      fi
      ;;
  esac
}

install_all() {
  local ids uid gid item code_before code_after unit_before unit_after
  if [ ! -f "$source_dir/pyproject.toml" ] || [ ! -d "$source_dir/edge_agent" ]; then
    die "$source_dir: not an edge-agent checkout (--source DIR)"
  fi
  [ -z "$root" ] || echo "install.sh: installing into $root"

  ensure_user
  ids=$(account_ids)
  if [ -z "$ids" ]; then
    note "no $APP account: /etc/edge-agent and /var/lib/edge-agent stay owned by root"
  elif [ "$is_root" = 0 ]; then
    note "not root: ownership ($APP) is not set"
  fi
  uid=${ids%%:*}
  gid=${ids##*:}

  code_before=""
  if [ -d "$(p "$OPT/src")" ]; then code_before=$(src_hash); fi
  ensure_dir "$OPT" 0755
  ensure_dir "$OPT/src" 0755
  for item in pyproject.toml README.md LICENSE; do
    install_file "$source_dir/$item" "$OPT/src/$item" 0644
  done
  for item in edge_agent configs docs; do
    if [ -d "$source_dir/$item" ]; then sync_tree "$source_dir/$item" "$OPT/src/$item"; fi
  done
  # The models themselves, not the test data under models/data and models/samples.
  sync_tree "$source_dir/models" "$OPT/models" 1
  build_venv
  code_after=$(src_hash)

  ensure_dir "$ETC" 0750 "${ids:+0:$gid}"
  ensure_dir "$ETC/credentials" 0700 "${ids:+0:0}"
  if [ -e "$(p "$ETC/agent.toml")" ]; then
    : # the operator's file: never touched
  else
    local rendered
    rendered=$(mktemp)
    render_config >"$rendered"
    install -m 0640 "$rendered" "$(p "$ETC/agent.toml")"
    rm -f "$rendered"
    did "installed $ETC/agent.toml (from configs/agent.toml)"
    set_owner "$ETC/agent.toml" "${ids:+0:$gid}"
  fi
  ensure_dir "$STATE" 0750 "${ids:+$uid:$gid}"

  unit_before=""
  if [ -f "$(p "$UNIT")" ]; then unit_before=$(sha256sum <"$(p "$UNIT")"); fi
  install_file "$source_dir/systemd/edge-agent.service" "$UNIT" 0644
  unit_after=$(sha256sum <"$(p "$UNIT")")

  if [ "$offline" = 1 ] || ! have_systemd; then
    [ "$offline" = 1 ] || note "systemd is not running here: the unit is enabled, not started"
    if ! command -v systemctl >/dev/null; then
      # What `systemctl --root enable` does for this unit ([Install] WantedBy=multi-user.target)
      if [ "$(readlink "$(p "$WANTS")" 2>/dev/null)" != "$UNIT" ]; then
        mkdir -p "$(dirname "$(p "$WANTS")")"
        ln -sfn "$UNIT" "$(p "$WANTS")"
        did "enabled $APP.service (multi-user.target; no systemctl here: symlink made directly)"
      fi
    elif [ "$(systemctl --root="${root:-/}" is-enabled "$APP" 2>/dev/null || true)" != enabled ]; then
      systemctl --root="${root:-/}" --quiet enable "$APP"
      did "enabled $APP.service (multi-user.target)"
    fi
  else
    if [ "$unit_before" != "$unit_after" ]; then
      systemctl daemon-reload
      did "reloaded systemd (unit changed)"
    fi
    if [ -x "$OPT/venv/bin/edge-agent" ] \
      && ! "$OPT/venv/bin/edge-agent" config validate "$ETC/agent.toml" >/dev/null; then
      note "$ETC/agent.toml does not validate (above); the service will not start until it does"
    fi
    if [ "$(systemctl is-enabled "$APP" 2>/dev/null || true)" != enabled ]; then
      systemctl --quiet enable "$APP"
      did "enabled $APP.service"
    fi
    if ! systemctl --quiet is-active "$APP"; then
      if systemctl start "$APP"; then
        did "started $APP.service"
      else
        note "$APP.service did not start: journalctl -u $APP"
      fi
    elif [ "$unit_before" != "$unit_after" ] || [ "$code_before" != "$code_after" ]; then
      if systemctl restart "$APP"; then
        did "restarted $APP.service (new code or unit)"
      else
        note "$APP.service did not restart: journalctl -u $APP"
      fi
    fi
  fi
}

# --- uninstall -----------------------------------------------------------------------------
uninstall_all() {
  local path
  [ -z "$root" ] || echo "install.sh: uninstalling from $root"
  if [ -f "$(p "$UNIT")" ]; then
    if [ "$offline" = 0 ] && have_systemd; then
      systemctl --quiet disable --now "$APP" || true
      did "stopped and disabled $APP.service"
    elif [ -L "$(p "$WANTS")" ] && command -v systemctl >/dev/null; then
      systemctl --root="${root:-/}" --quiet disable "$APP"
      did "disabled $APP.service"
    fi
    rm -f "$(p "$UNIT")"
    did "removed $UNIT"
    if [ "$offline" = 0 ] && have_systemd; then
      systemctl daemon-reload
    fi
  fi
  if [ -L "$(p "$WANTS")" ]; then
    rm -f "$(p "$WANTS")"
    did "removed $WANTS"
  fi
  if [ -e "$(p "$OPT")" ] || [ -L "$(p "$OPT")" ]; then
    rm -rf "$(p "$OPT")"
    did "removed $OPT"
  fi
  if [ "$purge" = 1 ]; then
    for path in "$ETC" "$STATE" /var/lib/private/edge-agent; do
      if [ -e "$(p "$path")" ]; then
        rm -rf "$(p "$path")"
        did "removed $path"
      fi
    done
    if [ -f "$(p /etc/passwd)" ] && grep -q "^$APP:" "$(p /etc/passwd)"; then
      if [ -n "$root" ]; then userdel --root "$root" "$APP"; else userdel "$APP"; fi
      did "removed system user $APP"
    fi
  else
    for path in "$ETC" "$STATE"; do
      [ ! -e "$(p "$path")" ] || note "kept $path (--purge removes it)"
    done
  fi
}

if [ "$action" = install ]; then install_all; else uninstall_all; fi
if [ "$changes" = 0 ]; then
  echo "install.sh: no changes"
else
  echo "install.sh: $changes change(s)"
fi
