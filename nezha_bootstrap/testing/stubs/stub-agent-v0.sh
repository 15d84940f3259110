#!/bin/sh
# nezha-bootstrap-stub: acts only inside the root it lies in (its paths come from its own location)
# Stub of the nezha-agent v0.20.5 binary, shipped in the fake release zip of a v0.x version (tests).
# `service install -s HOST:PORT -p SECRET [FLAGS...]` writes what the real agent writes
# (installer-v0.md), as stubs/stub-install.sh does: a 0600 unit whose ExecStart carries the
# arguments, `WorkingDirectory=` the caller's cwd; it refuses an existing unit ("Init already
# exists"). `service uninstall` removes the unit. Where / is the root and systemd runs, install and
# uninstall also `systemctl enable --now` / `disable --now` it; `service stop` stops it. Anything else is the agent itself: it
# idles like a connected agent. Paths are taken relative to the binary (<root>/opt/nezha/agent).
# NEZHA_STUB_RECORD: directory for the records (default <root>/var/lib/nezha-stub); calls go to agent/.
# NEZHA_STUB_MODE (service install only): exit1 fails, nounit claims success without writing the unit,
# dies leaves the pid file of an agent that exited (a SysV start).
set -eu
bin=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$bin/../../.." && pwd)
[ "$root" = "/" ] && prefix="" || prefix="$root"
record="${NEZHA_STUB_RECORD:-$prefix/var/lib/nezha-stub}/agent"
mkdir -p "$record"
n=1
while [ -e "$record/call-$n" ]; do n=$((n + 1)); done
call="$record/call-$n"
mkdir -p "$call"
(umask 077; printf '%s\0' "$@" > "$call/argv"; env > "$call/env")
printf "%s" "$(pwd)" > "$call/cwd"
readlink "/proc/$$/fd/0" > "$call/stdin" 2>/dev/null || echo unknown > "$call/stdin"

# @include v0-connect.sh

case "${1:-}" in
  -v|--version) echo "nezha-agent version @VERSION@"; exit 0 ;;
  service) ;;
  *) exec sleep 2147483647 ;;
esac
action=${2:-}
shift 2 || shift $#
unit="$prefix/etc/systemd/system/nezha-agent.service"
systemd=""
[ -z "$prefix" ] && [ -d /run/systemd/system ] && systemd=yes

case "$action" in
  install)
    case "${NEZHA_STUB_MODE:-ok}" in
      exit1) echo "stub nezha-agent: failing as asked"; exit 1 ;;
      nounit) echo "stub nezha-agent: claiming success without installing"; exit 0 ;;
    esac
    [ -e "$unit" ] && { echo "Init already exists"; exit 1; }
    case " $* " in *" -s "*" -p "*) ;; *) echo "stub nezha-agent: service install needs -s and -p"; exit 1 ;; esac
    exec_start="${bin#$prefix}/nezha-agent"
    for word in "$@"; do exec_start="$exec_start \"$word\""; done
    mkdir -p "$prefix/etc/systemd/system"
    (umask 077; cat > "$unit" <<UNIT
[Unit]
Description=Nezha Agent
ConditionFileIsExecutable=${bin#$prefix}/nezha-agent

[Service]
ExecStart=$exec_start
WorkingDirectory=$(pwd | sed "s|^$prefix||")
Restart=always
RestartSec=120

[Install]
WantedBy=multi-user.target
UNIT
)
    echo "stub nezha-agent: service installed"
    if [ -n "$systemd" ]; then
      systemctl daemon-reload
      systemctl enable --now nezha-agent >/dev/null 2>&1
    fi
    # The agent it started connects (the stub connects here, where the tool's NEZHA_DASHBOARD_URL is known).
    secret=""; tls=false; previous=""
    for word in "$@"; do
      [ "$previous" = "-p" ] && secret=$word
      [ "$word" = "--tls" ] && tls=true
      previous=$word
    done
    v0_connect "$secret" "$tls"
    if [ -z "$systemd" ] && [ "${NEZHA_STUB_MODE:-ok}" = "dies" ]; then  # a SysV start whose agent exits
      mkdir -p "$prefix/var/run"
      sh -c 'exit 0' & dead=$!; wait "$dead" || true
      echo "$dead" > "$prefix/var/run/nezha-agent.pid"
    fi ;;
  stop)
    [ -n "$systemd" ] && systemctl stop nezha-agent
    echo "stub nezha-agent: stopped" ;;
  uninstall)
    if [ -n "$systemd" ]; then systemctl disable --now nezha-agent >/dev/null 2>&1 || true; fi
    rm -f "$unit"
    if [ -n "$systemd" ]; then systemctl daemon-reload; fi
    echo "stub nezha-agent: service uninstalled" ;;
  *) echo "stub nezha-agent: unknown action '$action'"; exit 2 ;;
esac
