#!/bin/sh
# nezha-bootstrap-stub: acts only inside the root it lies in (its paths come from its own location)
# Stub of the nezha-agent v1/v2 binary, shipped in the fake release zip (demo, tests, first-boot test).
# `service -c CONFIG install|restart|stop|uninstall` does what the real agent's service commands
# leave behind: a systemd unit whose ExecStart is `nezha-agent "-c" "CONFIG"`, named nezha-agent when
# CONFIG is config.yml next to the binary, else nezha-agent-<7 hex of md5(CONFIG)>; `install` refuses
# an existing unit ("Init already exists"). Running the agent (`nezha-agent -c CONFIG`) "connects": it
# posts the uuid and secret of the config (NZ_UUID / NZ_CLIENT_SECRET / NZ_SERVER from the environment
# or /etc/sysconfig/nezha-agent override them, as in the real agent) to the fake dashboard's
# /_fake/agent-connect hook on the config's server, then idles.
# Where / is the root and systemd runs (the first-boot test), the service commands go through
# systemctl (`enable --now`, `restart`, `disable --now`) and systemd runs the agent; elsewhere (a test
# root) `install` and `restart` connect once themselves. Paths are taken relative to the binary,
# which lives at <root>/opt/nezha/agent, so it works under a test root exactly as at `/`.
# NEZHA_STUB_RECORD: directory for the records (default <root>/var/lib/nezha-stub); calls go to agent/.
# NEZHA_STUB_MODE=hang: service commands hang (a stop signal must kill them); fail-ACTION (fail-install,
# fail-restart, fail-stop, fail-uninstall): that service command changes nothing and exits 1; nounit:
# `install` claims success without writing the unit.
# NEZHA_STUB_INIT=sysv: a host without systemd: `install` writes /etc/init.d/<name> as the real agent
# v2.3.3 does there (observed: a SysV script whose `cmd="<bin> "-c" "<config>""` line runs the agent).
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
pwd > "$call/cwd"
readlink "/proc/$$/fd/0" > "$call/stdin" 2>/dev/null || echo unknown > "$call/stdin"

service=""
config=""
action=""
while [ $# -gt 0 ]; do
  case "$1" in
    -v|--version) echo "nezha-agent version @VERSION@"; exit 0 ;;
    service) service=yes; shift ;;
    -c|--config) config=$2; shift 2 ;;
    *) action=$1; shift ;;
  esac
done
[ -n "$config" ] || { echo "stub nezha-agent: no -c CONFIG"; exit 2; }
target=${config#$prefix}
if [ "$target" = "/opt/nezha/agent/config.yml" ]; then
  name=nezha-agent
else
  name="nezha-agent-$(printf '%s' "$target" | md5sum | cut -c1-7)"
fi
unit="$prefix/etc/systemd/system/$name.service"
[ "${NEZHA_STUB_INIT:-}" = "sysv" ] && unit="$prefix/etc/init.d/$name"
systemd=""
[ -z "$prefix" ] && [ -d /run/systemd/system ] && systemd=yes

value() {  # value KEY: the config's value for KEY, quotes removed
  sed -n "s/^$1:[[:space:]]*//p" "$config" | head -n 1 | sed 's/^"\(.*\)"$/\1/'
}

connect() {
  [ -f "$prefix/etc/sysconfig/nezha-agent" ] && . "$prefix/etc/sysconfig/nezha-agent"
  server=${NZ_SERVER:-$(value server)}
  secret=${NZ_CLIENT_SECRET:-$(value client_secret)}
  uuid=${NZ_UUID:-$(value uuid)}
  tls=${NZ_TLS:-$(value tls)}
  scheme=http
  [ "$tls" = "true" ] && scheme=https
  # The agent's log, as the real agent v2.3.3 writes it with `debug: true` (tests/data/real/agent-logs.json):
  # on stderr, so in the journal under systemd, else in the SysV script's /var/log/<name>.err.
  log=-
  [ -z "$systemd" ] && { mkdir -p "$prefix/var/log"; log="$prefix/var/log/$name.err"; }
  # The secret goes on stdin, never in argv, like the real agent's gRPC metadata.
  if printf '%s\n%s\n' "$uuid" "$secret" | python3 -c '
import datetime, json, socket, ssl, sys, urllib.error, urllib.request
url, log_path, debug, server = sys.argv[1:5]
def log(message):
    if debug != "true":
        return  # the real agent logs nothing without debug
    now = datetime.datetime.now()
    line = f"I: {now:%H:%M:%S} NEZHA@{now:%Y-%m-%d %H:%M:%S}>> {message}\n"
    if log_path == "-":
        sys.stderr.write(line)
    else:
        with open(log_path, "a", encoding="utf-8") as handle:
            handle.write(line)
def failed(desc):
    log(f"上报系统信息失败: rpc error: code = {desc}")
    sys.exit(1)
uuid, secret = sys.stdin.read().splitlines()[:2]
request = urllib.request.Request(url, data=json.dumps({"uuid": uuid, "secret": secret}).encode(),
                                 headers={"Content-Type": "application/json"})
log(f"Connection to {server} established")
try:
    with urllib.request.urlopen(request, timeout=2, context=ssl._create_unverified_context()) as answer:
        sys.stdout.write(answer.read().decode())
except urllib.error.HTTPError as error:  # the fake refused the secret or the uuid: gRPC Unauthenticated
    sys.stdout.write(error.read().decode())
    failed("Unauthenticated desc = 客户端认证失败")
except (urllib.error.URLError, OSError) as error:
    reason = getattr(error, "reason", error)
    if isinstance(reason, ConnectionRefusedError):
        failed(f"Unavailable desc = connection error: desc = \"transport: Error while dialing: dial tcp {server}: "
               "connect: connection refused\"")
    if isinstance(reason, (socket.timeout, TimeoutError)):
        failed("DeadlineExceeded desc = context deadline exceeded while waiting for connections to become ready")
    if isinstance(reason, ssl.SSLError):
        failed("Unavailable desc = connection error: desc = \"transport: authentication handshake failed: tls: "
               "first record does not look like a TLS handshake\"")
    failed("Unavailable desc = connection error: desc = \"error reading server preface: EOF\"")
log("正在更新本地缓存IP信息")
' "$scheme://$server/_fake/agent-connect" "$log" "$(value debug)" "$server" > "$call/connect"; then
    echo "stub nezha-agent: connected to $server"
  else
    echo "stub nezha-agent: could not connect to $server (the real agent keeps retrying)"
  fi
}

if [ -z "$service" ]; then  # the agent itself, as its unit runs it
  connect
  exec sleep 2147483647
fi
[ "${NEZHA_STUB_MODE:-}" = "hang" ] && { sleep 3600 & wait; }
[ "${NEZHA_STUB_MODE:-}" = "fail-$action" ] && { echo "stub nezha-agent: $action fails as asked"; exit 1; }
[ "${NEZHA_STUB_MODE:-}" = "nounit" ] && [ "$action" = install ] && { echo "stub nezha-agent: installed (not)"; exit 0; }

case "$action" in
  install)
    [ -e "$unit" ] && { echo "Init already exists"; exit 1; }
    grep -q '^uuid:' "$config" && grep -q '^client_secret:' "$config" && grep -q '^server:' "$config" \
      || { echo "stub nezha-agent: $config lacks server, client_secret or uuid"; exit 1; }
    mkdir -p "$(dirname "$unit")"
    if [ "${NEZHA_STUB_INIT:-}" = "sysv" ]; then
      cat > "$unit" <<SYSV
#!/bin/sh
# For RedHat and cousins:
# chkconfig: - 99 01
# description: 哪吒监控 Agent
# processname: ${bin#$prefix}/nezha-agent

cmd="${bin#$prefix}/nezha-agent "-c" "$target""

name=\$(basename \$(readlink -f \$0))
pid_file="/var/run/\$name.pid"
SYSV
      chmod 755 "$unit"
    else
    cat > "$unit" <<UNIT
[Unit]
Description=哪吒监控 Agent
ConditionFileIsExecutable=${bin#$prefix}/nezha-agent

[Service]
StartLimitInterval=5
StartLimitBurst=10
ExecStart=${bin#$prefix}/nezha-agent "-c" "$target"
WorkingDirectory=${bin#$prefix}
Restart=always
RestartSec=120
EnvironmentFile=-/etc/sysconfig/nezha-agent

[Install]
WantedBy=multi-user.target
UNIT
    fi
    echo "stub nezha-agent: installed $name"
    if [ -n "$systemd" ]; then
      systemctl daemon-reload
      systemctl enable --now "$name" >/dev/null 2>&1
    else
      connect
    fi ;;
  restart|start)
    [ -e "$unit" ] || { echo "stub nezha-agent: $name is not installed"; exit 1; }
    if [ -n "$systemd" ]; then systemctl "$action" "$name"; else connect; fi ;;
  stop)
    [ -n "$systemd" ] && systemctl stop "$name"
    echo "stub nezha-agent: stopped $name" ;;
  uninstall)
    [ -e "$unit" ] || { echo "stub nezha-agent: $name is not installed"; exit 1; }
    [ -n "$systemd" ] && { systemctl disable --now "$name" >/dev/null 2>&1 || true; }
    rm -f "$unit"
    [ -n "$systemd" ] && systemctl daemon-reload
    echo "stub nezha-agent: uninstalled $name" ;;
  *) echo "stub nezha-agent: unknown action '$action'"; exit 2 ;;
esac
