"""A local Nezha v1/v2 dashboard and agent release host for rehearsals (profiles v1.x to v2.1+).

It answers as the real dashboards do (the project's notes on them: dashboard-v1-v2.md).

Generation profiles reproduce the detection table; `/_fake/agent-connect` stands in for the agent's
gRPC enrollment and applies its rules; `/releases/v<X>/...` serves agent zips whose `nezha-agent` is
stubs/stub-agent-v1.sh, with their checksums.txt. Served with fake_v0's HTTP server.
Run it alone: `python -m nezha_bootstrap.testing.fake_v1 --help` (README, "Rehearsing with the fakes").

The REST API a node or an operator uses (dashboard-v1-v2.md, "Personal access tokens"):
- users: user 1 (agent secret `agent_secret`) is the admin; `add_user(role=...)` returns a new
  user's agent secret, `user_of(secret)` its id. An admin sees every server and group, a member
  only its own (servers are owned by the user whose secret enrolled them).
- `add_token(user, scopes, expires_in)` returns `nzp_<32 alnum>` (v2.1+ only). Default scopes: the
  least-privilege pair, the read scope named as the dashboard version names it (`read_scope`).
  `add_login(user, username, password)` allows `POST /api/v1/login` (JWT; on v2.1+ the answer also
  sets the `nz-csrf` cookie, whose value every unsafe JWT request must repeat in `X-CSRF-Token`).
- Answers, as the real v1.14.14, v2.0.14, v2.1.5 and v2.3.7 gave them (tests/data/real/, replayed by
  tests/test_fakes_match_real.py): `{"success":true,"data":...}` (an empty list: `{"success":true}`);
  handler errors HTTP 200 `{"error":...}` (no `success` key); no credential or a bad JWT: HTTP 200
  `{"error":"ApiErrorUnauthorized"}` with `WWW-Authenticate: JWT realm=<site_name>`; bad/unknown/expired
  PAT: HTTP 401 `ApiErrorUnauthorized: invalid api token`; missing scope: HTTP 403
  `ApiErrorForbidden: api token lacks scope <scope>`; a JWT write without the CSRF header (v2.1+): HTTP 403
  `ApiErrorForbidden: missing or invalid CSRF token`. A guest (no credential) may list groups.
  Scopes: `GET /api/v1/server` and `GET /api/v1/server-group` need `read_scope`, writes
  `nezha:server:write`, `POST /api/v1/batch-delete/server` `nezha:inventory:delete`.
- `PATCH /api/v1/server/:id` overwrites all eight fields; `PATCH /api/v1/server-group/:id` replaces
  name and members. `group_race = True`: every `GET /api/v1/server-group` waits up to `race_window` s
  for a second one and both get the same snapshot, taken when the second arrives, so two
  read-modify-write clients interleave and the later PATCH drops the earlier one's member (what real
  timing does now and then).
- WAF (with `real_ip_header` set, the IP is that header's value): each failed credential from an
  IP adds one to its count and blocks it for max(count^4, 3) s on every path (HTTP 403 HTML): logins,
  PATs, and from v2.0 also bad JWTs and agent secrets (the real v1.14.14 counted neither); a good
  login forgets the IP's login failures, not its others (observed). `clock` is the time source.
- `guest_view()` is the server list a guest sees; `changes` records every server write with its time.

The modules follow how the real dashboard's versions differ: versions.py holds every difference between
the profiles; records.py the rows (servers, groups, tokens, writes, agent calls); wire.py the HTTP
plumbing and Go's answers; auth.py logins and the v2.1+ access tokens; waf.py the WAF; groups.py the
group routes and their race; releases.py the agent release host; dashboard.py FakeV1, which joins them;
command.py the command line.
"""

from nezha_bootstrap.testing.fake_v1.command import main
from nezha_bootstrap.testing.fake_v1.dashboard import FakeV1, serve_v1
from nezha_bootstrap.testing.fake_v1.records import (
    Change,
    Connection,
    Token,
    V1Group,
    V1Server,
    new_agent_secret,
    rfc3339,
)
from nezha_bootstrap.testing.fake_v1.releases import ARCHES, agent_zip, release_files, stub_agent
from nezha_bootstrap.testing.fake_v1.versions import PROFILE_VERSIONS, PROFILES
from nezha_bootstrap.testing.fake_v1.waf import WAF_PAGE
from nezha_bootstrap.testing.fake_v1.wire import SITE_NAME, Request, go_json_problem

__all__ = [
    "ARCHES", "PROFILES", "PROFILE_VERSIONS", "SITE_NAME", "WAF_PAGE", "Change", "Connection", "FakeV1", "Request",
    "Token", "V1Group", "V1Server", "agent_zip", "go_json_problem", "main", "new_agent_secret", "release_files",
    "rfc3339", "serve_v1", "stub_agent",
]
