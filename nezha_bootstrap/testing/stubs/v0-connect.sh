# v0_connect, one source for stub-install.sh and stub-agent-v0.sh: stubs/v0-connect.sh, put in place of
# their include line as they are served (testing/stubscripts.py). A stub travels alone
# (a downloaded install.sh, the nezha-agent of a release zip), so it cannot source a file beside it.
# What the agent's gRPC connection meets at the dashboard, for the fake v0 dashboard's last_active and
# its agent-port knobs: the secret goes on stdin (never argv), to NEZHA_STUB_DASHBOARD (default: the
# NEZHA_DASHBOARD_URL the tool runs with)
# /_fake/agent-connect (in the tests the probe address is a name that does not resolve).
v0_connect() {  # v0_connect SECRET TLS
  dashboard=${NEZHA_STUB_DASHBOARD:-${NEZHA_DASHBOARD_URL:-}}
  [ -n "$dashboard" ] || return 0
  printf '%s\n' "$1" | python3 -c '
import json, ssl, sys, urllib.request
body = json.dumps({"secret": sys.stdin.readline().strip(), "tls": sys.argv[2] == "true"}).encode()
request = urllib.request.Request(sys.argv[1] + "/_fake/agent-connect", data=body,
                                 headers={"Content-Type": "application/json"})
with urllib.request.urlopen(request, timeout=10, context=ssl._create_unverified_context()) as answer:
    print("stub nezha-agent: " + json.load(answer)["outcome"])
' "$dashboard" "$2" || true
}
