#!/bin/sh
# nezha-bootstrap-stub: acts only inside the root it lies in (its paths come from its own location)
# Stub of nezhahq/scripts install.sh, served by the fake dashboard (demo, tests, first-boot test).
# `install_agent HOST PORT SECRET [FLAGS...]` records how it was called, then does what the real
# script leaves behind: /opt/nezha/agent/nezha-agent and a unit whose ExecStart carries the
# arguments. Paths are taken relative to the working directory, which the tool sets to
# <root>/opt/nezha/agent, so the stub works under a test root exactly as at `/`.
# NEZHA_STUB_RECORD: directory for the records (default <root>/var/lib/nezha-stub).
# NEZHA_STUB_MODE: ok (default), exit1, hang, nounit, wrongunit; slow: wait NEZHA_STUB_DELAY seconds
# (default 3), then install as ok does (an installer a killed run leaves behind still writes the unit).
set -eu
[ "${1:-}" = "install_agent" ] || { echo "stub install.sh: nothing to do for '${1:-}'"; exit 0; }
here=$(pwd)
root=$(cd ../../.. && pwd)
[ "$root" = "/" ] && prefix="" || prefix="$root"
record="${NEZHA_STUB_RECORD:-$prefix/var/lib/nezha-stub}"
mkdir -p "$record"
n=1
while [ -e "$record/call-$n" ]; do n=$((n + 1)); done
call="$record/call-$n"
mkdir -p "$call"
(umask 077; printf '%s\0' "$@" > "$call/argv"; env > "$call/env")
printf '%s' "$here" > "$call/cwd"
readlink "/proc/$$/fd/0" > "$call/stdin" 2>/dev/null || echo unknown > "$call/stdin"
echo "stub install.sh: installing agent for $2:$3"

case "${NEZHA_STUB_MODE:-ok}" in
  exit1) echo "stub install.sh: failing as asked"; exit 1 ;;
  hang) sleep 3600 & wait; exit 0 ;;
  nounit) echo "stub install.sh: claiming success without installing"; exit 0 ;;
  slow) sleep "${NEZHA_STUB_DELAY:-3}" ;;
esac

# @include v0-connect.sh

host=$2; port=$3; secret=$4
shift 4
agent="$prefix/opt/nezha/agent/nezha-agent"
mkdir -p "$prefix/opt/nezha/agent" "$prefix/etc/systemd/system"
cat > "$agent" <<'AGENT'
#!/bin/sh
# nezha-bootstrap-stub: acts only inside the root it lies in (its paths come from its own location)
# stub nezha-agent: `service uninstall` removes the unit; otherwise it idles like a connected agent.
bin=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$bin/../../.." && pwd)
[ "$root" = "/" ] && prefix="" || prefix="$root"
if [ "${1:-}" = "service" ] && [ "${2:-}" = "stop" ]; then
  [ -z "$prefix" ] && [ -d /run/systemd/system ] && systemctl stop nezha-agent
  echo "stub nezha-agent: stopped"
  exit 0
fi
if [ "${1:-}" = "service" ] && [ "${2:-}" = "uninstall" ]; then
  if [ -z "$prefix" ] && [ -d /run/systemd/system ]; then
    systemctl disable --now nezha-agent >/dev/null 2>&1 || true
  fi
  rm -f "$prefix/etc/systemd/system/nezha-agent.service"
  [ -z "$prefix" ] && [ -d /run/systemd/system ] && systemctl daemon-reload || true
  echo "stub nezha-agent: service uninstalled"
  exit 0
fi
exec sleep 2147483647
AGENT
chmod 755 "$agent"
# The real script downloads the release zip into its cwd, unzips it, then `mv nezha-agent` onto itself
# fails ("are the same file") when the cwd is /opt/nezha/agent, skipping its `rm` of the zip and README.
printf 'PK stub release zip\n' > "$here/nezha-agent_linux_amd64.zip"
printf '# nezha-agent\n' > "$here/README.md"

exec_start="/opt/nezha/agent/nezha-agent \"-s\" \"$host:$port\" \"-p\" \"$secret\""
for flag in "$@"; do exec_start="$exec_start \"$flag\""; done
[ "${NEZHA_STUB_MODE:-ok}" = "wrongunit" ] && exec_start="/opt/nezha/agent/nezha-agent \"-s\" \"wrong.example:1\" \"-p\" \"$secret\""
unit="$prefix/etc/systemd/system/nezha-agent.service"
(umask 077; cat > "$unit" <<UNIT
[Unit]
Description=Nezha Agent
ConditionFileIsExecutable=/opt/nezha/agent/nezha-agent

[Service]
ExecStart=$exec_start
WorkingDirectory=${here#$prefix}
Restart=always
RestartSec=120

[Install]
WantedBy=multi-user.target
UNIT
)
if [ -z "$prefix" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable --now nezha-agent >/dev/null 2>&1
fi
# The agent it started connects (the stub connects here, where the tool's NEZHA_DASHBOARD_URL is known).
tls=false
case " $* " in *" --tls "*) tls=true ;; esac
v0_connect "$secret" "$tls"
echo "stub install.sh: Nezha Agent installed successfully"
