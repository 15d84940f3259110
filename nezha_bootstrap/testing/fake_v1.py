"""A local Nezha v1/v2 dashboard and agent release host for rehearsals (profiles v1.x to v2.1+).

It answers as the real dashboards do (the project's notes on them: dashboard-v1-v2.md).

Generation profiles reproduce the detection table; `/_fake/agent-connect` stands in for the agent's
gRPC enrollment and applies its rules; `/releases/v<X>/...` serves agent zips whose `nezha-agent` is
stubs/stub-agent-v1.sh, with their checksums.txt. Served with fake_v0's HTTP server.
Run it alone: `python -m nezha_bootstrap.testing.fake_v1 --help` (docs: "Rehearse with the fakes").

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
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import secrets
import threading
import time
import zipfile
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Callable, ClassVar
from urllib.parse import parse_qs, urlsplit

from nezha_bootstrap.identity import UUID_RE
from nezha_bootstrap.testing.fake_v0 import NOT_FOUND_HTML, Faults, Journal, Running, serve

PROFILES = ("v1.0-1.4", "v1.5-1.14", "v2.0", "v2.1+")
# The newest release of each profile's range: the ownership check exists from v2.0.10.
PROFILE_VERSIONS = {"v1.0-1.4": (1, 4, 0), "v1.5-1.14": (1, 14, 0), "v2.0": (2, 0, 10), "v2.1+": (2, 3, 1)}
NOT_FOUND_JSON = '{"error":"404 Not Found"}'
REAL_IP_JSON = '{"error":"real ip header not found"}'
ARCHES = ("amd64", "arm64", "386", "arm", "s390x", "riscv64", "mips", "mipsle", "loong64")
_WORDS_A = ("calm", "brave", "quick", "silent", "bright", "gentle", "lucky", "misty", "proud", "witty")
_WORDS_B = ("lark", "otter", "maple", "heron", "fox", "pine", "comet", "river", "finch", "cedar")


def new_agent_secret() -> str:
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    return "".join(secrets.choice(alphabet) for _ in range(32))


def stub_agent(version: str) -> bytes:
    """The stub agent of `version` (v0.x: the v0 agent's `service install -s -p`), printing it for -v."""
    template = "stub-agent-v0.sh" if version.startswith("0.") else "stub-agent-v1.sh"
    text = resources.files("nezha_bootstrap.testing").joinpath(f"stubs/{template}").read_text(encoding="utf-8")
    return text.replace("@VERSION@", version).encode("utf-8")


def agent_zip(binary: bytes) -> bytes:
    """A release zip holding only `nezha-agent`, executable."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        info = zipfile.ZipInfo("nezha-agent", date_time=(2026, 8, 1, 0, 0, 0))
        info.external_attr = 0o100755 << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        archive.writestr(info, binary)
    return buffer.getvalue()


@dataclass
class V1Server:
    id: int
    name: str
    uuid: str
    owner: int
    hide_for_guest: bool = False  # an enrolled server is visible to guests
    note: str = ""
    public_note: str = ""
    display_index: int = 0
    enable_ddns: bool = False
    ddns_profiles: list[int] = field(default_factory=list)
    override_ddns_domains: dict[str, list[str]] = field(default_factory=dict)
    created_at: float = 0.0
    last_active: float | None = None  # wall-clock time of the agent's last report (the connect hook)
    connected: bool = False  # its agent connected and keeps reporting (every look sees a newer report)

    def listed(self, with_owner: bool = True) -> dict[str, Any]:
        """The item of GET /api/v1/server: empty and false fields are omitted, as Go's omitempty does.

        Keys in the real dashboards' order; `owner` observed on v2.0.14, v2.1.5 and v2.3.7, not v1.14.14;
        host/state/geoip are what the agent reported (kept minimal here); last_active is Go's zero time
        until the agent reports."""
        if self.connected:  # the real agent v2.3.3 reports every report_delay s, each moving last_active
            self.last_active = max(time.time(), (self.last_active or 0) + 0.001)
        stamp = rfc3339(self.created_at)
        item: dict[str, Any] = {"id": self.id, "created_at": stamp, "updated_at": stamp, "name": self.name,
                                "uuid": self.uuid}
        optional = {"note": self.note, "public_note": self.public_note, "display_index": self.display_index,
                    "hide_for_guest": self.hide_for_guest, "enable_ddns": self.enable_ddns,
                    "ddns_profiles": self.ddns_profiles, "override_ddns_domains": self.override_ddns_domains}
        item.update({key: value for key, value in optional.items() if value or key == "display_index"})
        item.update({"host": {"version": ""} if self.last_active else {}, "state": {}, "geoip": {"ip": {}},
                     "last_active": rfc3339(self.last_active) if self.last_active else GO_ZERO_TIME})
        if with_owner:
            item["owner"] = {"id": 0}
        return item


@dataclass
class V1Group:
    id: int
    name: str
    owner: int
    servers: list[int] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)

    def listed(self) -> dict[str, Any]:
        """The item of GET /api/v1/server-group (no user_id in the real answer)."""
        stamp = rfc3339(self.created_at)
        return {"group": {"id": self.id, "created_at": stamp, "updated_at": stamp, "name": self.name},
                "servers": list(self.servers) or None}


GO_ZERO_TIME = "0001-01-01T00:00:00Z"


def rfc3339(when: float) -> str:
    """A wall-clock time as Go's time.Time marshals it (UTC, nanoseconds)."""
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when))
    return f"{whole}.{int((when % 1) * 1e9):09d}Z"


@dataclass(eq=False)  # identity, not field equality: a waiting read is found and removed by `in`/remove
class _RaceSlot:
    """A group read held by the race switch, waiting for a partner read."""

    paired: threading.Event = field(default_factory=threading.Event)
    # Filled by the partner, under the lock, before it sets `paired`: the one snapshot both reads answer.
    groups: tuple[V1Group, ...] = ()


@dataclass(frozen=True)
class Token:
    """A personal access token: its owner, scopes and expiry (clock time, None: never)."""

    value: str
    user: int
    scopes: tuple[str, ...]
    expires_at: float | None = None


@dataclass(frozen=True)
class Change:
    """One server write: when, which server, the fields as written."""

    at: float
    server_id: int
    fields: dict[str, Any]


@dataclass(frozen=True)
class Connection:
    """One agent-connect call and what the dashboard did with it."""

    uuid: str
    outcome: str  # "created", "known", or the refusal
    server_id: int | None = None
    at: float = field(default_factory=time.time, compare=False)  # wall-clock arrival, for the first-boot timing


@dataclass
class FakeV1:
    """State and behaviour of one fake v1/v2 dashboard and its release host."""

    speaks_h2: ClassVar[bool] = True  # gRPC shares the web port: unencrypted HTTP/2 beside HTTP/1 (v1/v2)

    profile: str = "v2.1+"
    agent_secrets: dict[str, int] = field(default_factory=lambda: {new_agent_secret(): 1})
    real_ip_header: str | None = None  # when set, requests without this header are refused
    servers: list[V1Server] = field(default_factory=list)
    connections: list[Connection] = field(default_factory=list)
    journal: list[Journal] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)
    failed_credentials: int = 0  # what the WAF counts
    faults: Faults = field(default_factory=Faults)
    lock: threading.Lock = field(default_factory=threading.Lock)
    version: tuple[int, int, int] | None = None  # the dashboard's version; default: the profile's newest
    admins: set[int] = field(default_factory=lambda: {1})
    tokens: dict[str, Token] = field(default_factory=dict)
    logins: dict[str, tuple[int, str]] = field(default_factory=dict)  # username -> (user, password)
    sessions: dict[str, tuple[int, str]] = field(default_factory=dict)  # JWT -> (user, CSRF value)
    groups: list[V1Group] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    group_race: bool = False
    race_window: float = 0.3
    waf: dict[str, tuple[int, float]] = field(default_factory=dict)  # ip -> (failures, blocked until)
    login_failures: dict[str, int] = field(default_factory=dict)  # ip -> the failures a good login forgets
    clock: Callable[[], float] = time.monotonic
    _next_id: int = 1
    _next_group_id: int = 1
    _race_waiting: list[_RaceSlot] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"unknown profile {self.profile!r}; one of {', '.join(PROFILES)}")
        if self.version is None:
            self.version = PROFILE_VERSIONS[self.profile]

    @property
    def has_tokens(self) -> bool:
        return self.profile == "v2.1+"

    @property
    def read_scope(self) -> str:
        """The scope that lists servers: nezha:server:read on v2.1.0 and v2.1.1, later nezha:inventory:read."""
        return "nezha:server:read" if self.version in ((2, 1, 0), (2, 1, 1)) else "nezha:inventory:read"

    @property
    def agent_secret(self) -> str:
        """The first user's agent secret."""
        return next(iter(self.agent_secrets))

    def add_user(self, role: str = "member") -> str:
        """Another user (role "member" or "admin") with its own agent secret (v1.4.0+); returns the secret."""
        secret = new_agent_secret()
        user = max(self.agent_secrets.values()) + 1
        self.agent_secrets[secret] = user
        if role == "admin":
            self.admins.add(user)
        return secret

    def user_of(self, secret: str) -> int:
        """The id of the user whose agent secret this is."""
        return self.agent_secrets[secret]

    def add_token(self, user: int = 1, scopes: tuple[str, ...] | None = None,
                  expires_in: float | None = None, value: str | None = None) -> str:
        """A personal access token `nzp_...` of `user` (v2.1+; `value`: this one, else a new one);
        default scopes: read + nezha:server:write."""
        if not self.has_tokens:
            raise ValueError(f"profile {self.profile} has no personal access tokens (v2.1.0+)")
        value = value or "nzp_" + new_agent_secret()
        chosen = scopes if scopes is not None else (self.read_scope, "nezha:server:write")
        expires = None if expires_in is None else self.clock() + expires_in
        self.tokens[value] = Token(value, user, tuple(chosen), expires)
        return value

    def add_login(self, user: int, username: str, password: str) -> None:
        """Let `username`/`password` log in as `user` (POST /api/v1/login)."""
        self.logins[username] = (user, password)

    def add_group(self, name: str, servers: tuple[int, ...] = (), owner: int = 1) -> V1Group:
        """A server group, as the UI would create it."""
        with self.lock:
            group = V1Group(self._next_group_id, name, owner, sorted(set(servers)))
            self._next_group_id += 1
            self.groups.append(group)
            return group

    def server(self, uuid: str) -> V1Server | None:
        """The row of `uuid`, if any."""
        with self.lock:
            return next((s for s in self.servers if s.uuid == uuid), None)

    def guest_view(self) -> list[dict[str, Any]]:
        """What a guest (not logged in) sees: the servers not hidden, by display_index then id."""
        with self.lock:
            shown = [s for s in self.servers if not s.hide_for_guest]
        shown.sort(key=lambda s: (-s.display_index, s.id))  # the dashboard puts higher indexes first
        return [{"id": s.id, "name": s.name, "public_note": s.public_note} for s in shown]

    def blocked(self, ip: str) -> bool:
        """Whether the WAF blocks `ip` now."""
        with self.lock:
            return self.waf.get(ip, (0, 0.0))[1] > self.clock()

    def add_release(self, version: str, arches: tuple[str, ...] = ARCHES) -> None:
        """Serve /releases/v<version>/nezha-agent_linux_<arch>.zip and its checksums.txt."""
        lines = []
        for arch in arches:
            asset = f"nezha-agent_linux_{arch}.zip"
            data = agent_zip(stub_agent(version))
            self.files[f"/releases/v{version}/{asset}"] = data
            lines.append(f"{hashlib.sha256(data).hexdigest()}  {asset}\n")  # sha256sum's two spaces, as released
        self.files[f"/releases/v{version}/checksums.txt"] = "".join(lines).encode()

    def delete_server(self, server_id: int) -> None:
        with self.lock:
            self.servers = [s for s in self.servers if s.id != server_id]

    # --- request handling, pure of sockets (same contract as fake_v0.FakeDashboard) ---
    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes, client: str) -> Any:
        path, query = urlsplit(target).path, urlsplit(target).query
        with self.lock:
            self.journal.append(Journal(method, path, query, dict(headers), body, client))
            fault = self.faults.fail_next.pop(0) if self.faults.fail_next else None
        if fault is not None:
            return fault
        if path in self.files and method == "GET":
            return 200, "application/octet-stream", self.files[path]
        if path.startswith("/releases/"):
            return 404, "text/plain", b"Not Found"
        if self.real_ip_header and self.real_ip_header.lower() not in headers:
            return 200, "application/json", REAL_IP_JSON.encode()
        ip = headers.get(self.real_ip_header.lower(), client) if self.real_ip_header else client
        if self.real_ip_header and self.blocked(ip):
            return 403, "text/html; charset=utf-8", WAF_PAGE.encode()
        if path == "/_fake/agent-connect" and method == "POST":
            return self._connect(body, ip)
        route = _route(method, path)
        if route is not None:
            return self._rest(route, Request(method, path, query, headers, body, ip))
        return self._api(method, path)

    def _api(self, method: str, path: str) -> Any:
        if path == "/api/v1/setting" and method == "GET":
            return _answer({"success": True, "data": self._setting()})
        if path == "/api/v1/api-tokens" and self.profile == "v2.1+":
            return _unauthorized()
        if path.startswith("/api/"):
            return (200 if self.profile == "v1.0-1.4" else 404), JSON_TYPE, NOT_FOUND_JSON.encode()
        return 404, "text/html", NOT_FOUND_HTML.encode()

    def _setting(self) -> dict[str, Any]:
        if self.profile == "v1.0-1.4":
            return {"site_name": SITE_NAME, "language": "en_US", "custom_code": ""}
        # The guest view of the real v1.14.14-v2.3.7: no `version` (only a logged-in view has it).
        data: dict[str, Any] = {"config": {"language": "en-US", "site_name": SITE_NAME,
                                           "ip_change_notification_group_id": 0, "cover": 0}}
        if self.profile in ("v2.0", "v2.1+"):
            data["tsdb_enabled"] = False
        return data

    def _connect(self, body: bytes, ip: str = "") -> Any:
        try:
            value = json.loads(body)
            uuid, secret = str(value["uuid"]), str(value["secret"])
        except (ValueError, KeyError, TypeError):
            return 400, "application/json", b'{"error":"bad hook request"}'
        with self.lock:
            outcome, server_id = self._enroll(uuid, secret, ip)
            self.connections.append(Connection(uuid, outcome, server_id))
        if server_id is None:
            return 403, "application/json", json.dumps({"error": outcome}).encode()
        return 200, "application/json", json.dumps({"outcome": outcome, "id": server_id}).encode()

    def _enroll(self, uuid: str, secret: str, ip: str = "") -> tuple[str, int | None]:
        """The dashboard's rules for an agent's call (caller holds the lock)."""
        owner = self.agent_secrets.get(secret)
        if owner is None:
            self._count_failure(ip, counted=self.counts_jwt_and_agent)
            return "wrong agent secret", None
        if not UUID_RE.match(uuid):
            self._count_failure(ip, counted=self.counts_jwt_and_agent)
            return "malformed uuid", None
        known = next((s for s in self.servers if s.uuid == uuid), None)
        if known is not None:
            if known.owner != owner and self.dashboard_version >= (2, 0, 10):
                return "does not belong to the agent secret owner", None
            known.last_active, known.connected = time.time(), True
            return "known", known.id
        server = V1Server(self._next_id, _two_words(), uuid, owner, created_at=self.clock(), last_active=time.time(),
                          connected=True)
        self._next_id += 1
        self.servers.append(server)
        return "created", server.id

    @property
    def dashboard_version(self) -> tuple[int, int, int]:
        return self.version or PROFILE_VERSIONS[self.profile]

    @property
    def counts_jwt_and_agent(self) -> bool:
        """Whether the WAF counts a bad JWT and a wrong agent secret: not on v1.x (observed on v1.14.14)."""
        return self.dashboard_version >= (2, 0, 0)

    @property
    def lists_owner(self) -> bool:
        """Server items carry `owner` (observed on v2.0.14, v2.1.5, v2.3.7; not on v1.14.14)."""
        return self.dashboard_version >= (2, 0, 14)

    # --- the REST API of dashboard-v1-v2.md: auth, then one handler per route ---
    def _rest(self, route: str, request: Request) -> Any:
        if route == "login":
            return self._login(request)
        scope = self.read_scope if ROUTE_SCOPES[route] == "read" else ROUTE_SCOPES[route]
        if route == "list_groups" and not _credential(request):
            return self._list_groups(request, GUEST)  # guests may (force_auth off, the default)
        user, refusal = self._authenticate(request, scope)
        if refusal is not None:
            return refusal
        handler = getattr(self, f"_{route}")
        answer = handler(request, user)
        if self.has_tokens and route == "list_servers" and not _cookie(request, "nz-csrf"):
            # v2.1+ hands a CSRF cookie to an authenticated read that came without one (observed on
            # GET /api/v1/server with a JWT or an access token; not on writes nor on the guest routes).
            answer = (*answer[:3], {"Set-Cookie": [f"nz-csrf={secrets.token_urlsafe(24)}; Path=/; SameSite=Strict"]})
        return answer

    def _authenticate(self, request: Request, scope: str) -> tuple[int, Any]:
        """The user a request acts for, or the refusal to answer with."""
        credential = _credential(request)
        if not credential:
            return 0, _unauthorized()
        if credential.startswith("nzp_") and self.has_tokens:
            return self._check_token(credential, scope, request.ip)
        with self.lock:
            session = self.sessions.get(credential)
            if session is None:
                self._count_failure(request.ip, counted=self.counts_jwt_and_agent)
                return 0, _unauthorized()
        unsafe = request.method not in ("GET", "HEAD", "OPTIONS")
        if unsafe and self.has_tokens and request.headers.get("x-csrf-token") != session[1]:
            return 0, _answer({"error": "ApiErrorForbidden: missing or invalid CSRF token"}, 403)
        return session[0], None

    def _check_token(self, value: str, scope: str, ip: str) -> tuple[int, Any]:
        with self.lock:
            token = self.tokens.get(value)
            if token is None or (token.expires_at is not None and token.expires_at <= self.clock()):
                self._count_failure(ip)
                return 0, _answer({"error": "ApiErrorUnauthorized: invalid api token"}, 401)
        if not _grants(token.scopes, scope):
            return 0, _answer({"error": f"ApiErrorForbidden: api token lacks scope {scope}"}, 403)
        return token.user, None

    def _count_failure(self, ip: str, counted: bool = True, login: bool = False) -> None:
        """One failed credential: the WAF blocks the IP for max(count^4, 3) s (caller holds the lock).

        `counted` False: a failure the real dashboard's WAF does not count (v1.x: bad JWTs, agents)."""
        self.failed_credentials += 1
        if self.real_ip_header and counted:
            count = self.waf.get(ip, (0, 0.0))[0] + 1
            self.waf[ip] = (count, self.clock() + max(count ** 4, 3))
            if login:
                self.login_failures[ip] = self.login_failures.get(ip, 0) + 1

    def _forget_login_failures(self, ip: str) -> None:
        """A good login: the IP's login failures no longer count, its others do (caller holds the lock)."""
        forgotten = self.login_failures.pop(ip, 0)
        if forgotten and ip in self.waf:
            count, until = self.waf[ip]
            self.waf[ip] = (count - forgotten, until)

    def _login(self, request: Request) -> Any:
        form = _json_object(request.body) or {}
        with self.lock:
            known = self.logins.get(str(form.get("username")))
            if known is None or known[1] != form.get("password"):
                self._count_failure(request.ip, login=True)
                return _unauthorized()
            jwt, csrf = "eyJ" + secrets.token_urlsafe(24), secrets.token_urlsafe(24)
            self.sessions[jwt] = (known[0], csrf)
            self._forget_login_failures(request.ip)
        # The real cookies (observed): no HttpOnly; Max-Age = jwt_timeout (24 h by default); SameSite=Lax
        # on nz-jwt from v2.0; nz-csrf (v2.1+) SameSite=Strict, its value repeated in X-CSRF-Token.
        cookies = [f"nz-jwt={jwt}; Path=/; Max-Age=86400" + ("; SameSite=Lax" if self.profile != "v1.5-1.14" else "")]
        if self.has_tokens:
            cookies.append(f"nz-csrf={csrf}; Path=/; SameSite=Strict")
        answer = {"success": True, "data": {"token": jwt, "expire": "2099-01-01T00:00:00Z"}}
        return 200, "application/json; charset=utf-8", json.dumps(answer).encode(), {"Set-Cookie": cookies}

    def _visible(self, user: int) -> list[V1Server]:
        return [s for s in self.servers if user in self.admins or s.owner == user]

    def _list_servers(self, request: Request, user: int) -> Any:
        wanted = [int(i) for i in parse_qs(request.query).get("id", [""])[0].split(",") if i.isdigit()]
        with self.lock:
            # The real order (v2.3.7 service/singleton/server.go sortList): display_index high to low,
            # then id; `?id=1,2`: the asked ones with a display_index first, then the rest, each in the
            # order asked (model/common.go searchByIDPri); none of them listed: the whole list.
            servers = sorted(self._visible(user), key=lambda s: (-s.display_index, s.id))
            by_id = {s.id: s for s in servers}
            asked = [by_id[i] for i in wanted if i in by_id]
            matched = [s for s in asked if s.display_index] + [s for s in asked if not s.display_index]
            items = [s.listed(self.lists_owner) for s in (matched or servers)]
        return _answer({"success": True, "data": items} if items else {"success": True})

    def _patch_server(self, request: Request, user: int) -> Any:
        """Id, then the form (Go's binding errors, as the real one words them), then the server."""
        word = request.path.rsplit("/", 1)[1]
        if not word.isdigit():
            return _answer({"error": f'strconv.ParseUint: parsing "{word}": invalid syntax'})
        server_id = int(word)
        written, problem = _server_form(request.body)  # every field, omitted ones at their zero value
        if problem is not None:
            return _answer({"error": problem})
        with self.lock:
            server = next((s for s in self.servers if s.id == server_id), None)
            if server is None:
                return _answer({"error": f"server id {server_id} does not exist"})
            if user not in self.admins and server.owner != user:
                return _answer({"error": "permission denied"})
            for key, value in written.items():
                setattr(server, key, value)
            self.changes.append(Change(self.clock(), server_id, written))
        return _answer({"success": True})

    def _list_groups(self, request: Request, user: int) -> Any:
        if self.group_race:
            groups = self._pair_up()
        else:
            with self.lock:
                groups = self._groups_snapshot()
        if user == GUEST:  # only groups with a server guests see, and only those servers (observed source)
            with self.lock:
                shown = {s.id for s in self.servers if not s.hide_for_guest}
            groups = tuple(V1Group(g.id, g.name, g.owner, [i for i in g.servers if i in shown], g.created_at)
                           for g in groups if shown & set(g.servers))
        items = [g.listed() for g in groups if user in (*self.admins, GUEST) or g.owner == user]
        return _answer({"success": True, "data": items} if items else {"success": True})

    def _groups_snapshot(self) -> tuple[V1Group, ...]:
        """Copies of the groups as they are now (caller holds the lock); later PATCHes do not reach them."""
        return tuple(V1Group(g.id, g.name, g.owner, list(g.servers), g.created_at) for g in self.groups)

    def _pair_up(self) -> tuple[V1Group, ...]:
        """Hold this read until a second one arrives (or race_window passes); both answer one snapshot.

        The second read takes the snapshot for both before it wakes the first. Were the first to read
        only once it runs again, the second's client could have read, PATCHed and added its member by
        then, the first would see that member and keep it, and the promised lost update would not happen.
        """
        with self.lock:
            if self._race_waiting:
                waiting = self._race_waiting.pop(0)
                waiting.groups = self._groups_snapshot()
                waiting.paired.set()
                return waiting.groups
            slot = _RaceSlot()
            self._race_waiting.append(slot)
        slot.paired.wait(self.race_window)
        with self.lock:
            # Still listed: nobody came in time, read alone. Not listed: a partner came (perhaps just
            # after the wait timed out) and has already filled `groups` under this lock.
            if slot in self._race_waiting:
                self._race_waiting.remove(slot)
                slot.groups = self._groups_snapshot()
        return slot.groups

    def _create_group(self, request: Request, user: int) -> Any:
        form = _json_object(request.body)
        if form is None or not isinstance(form.get("name", ""), str):
            return _answer({"error": "invalid request body"})
        with self.lock:
            problem = self._members_problem(form.get("servers"), user)
            if problem:
                return _answer({"error": problem})
            group = V1Group(self._next_group_id, form.get("name", ""), user, sorted(set(form.get("servers") or [])))
            self._next_group_id += 1
            self.groups.append(group)
        return _answer({"success": True, "data": group.id})

    def _patch_group(self, request: Request, user: int) -> Any:
        group_id = int(request.path.rsplit("/", 1)[1])
        form = _json_object(request.body)
        if form is None or not isinstance(form.get("name", ""), str):
            return _answer({"error": "invalid request body"})
        with self.lock:
            group = next((g for g in self.groups if g.id == group_id), None)
            if group is None:
                return _answer({"error": f"group id {group_id} does not exist"})
            if user not in self.admins and group.owner != user:
                return _answer({"error": "permission denied"})
            problem = self._members_problem(form.get("servers"), user)
            if problem:
                return _answer({"error": problem})
            # Replace-all of both fields (observed): an omitted name becomes "", omitted servers none.
            group.name, group.servers = form.get("name", ""), sorted(set(form.get("servers") or []))
        return _answer({"success": True})

    def _members_problem(self, members: Any, user: int) -> str | None:
        if members is None:
            return None
        if not isinstance(members, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in members):
            return "invalid request body"
        mine = {s.id for s in self._visible(user)}
        return "have invalid server id" if any(i not in mine for i in members) else None  # the real text

    def _delete_servers(self, request: Request, user: int) -> Any:
        try:
            ids = set(json.loads(request.body))
        except (ValueError, TypeError):
            return _answer({"error": "invalid request body"})
        with self.lock:
            self.servers = [s for s in self.servers if s.id not in ids or (user not in self.admins and s.owner != user)]
        return _answer({"success": True})


WAF_PAGE = "<!DOCTYPE html><html><body>you were blocked by nezha WAF</body></html>"
JSON_TYPE = "application/json; charset=utf-8"
SITE_NAME = "Nezha"
GUEST = 0  # the user a request without a credential acts as, where guests are allowed
WRITE_SCOPE = "nezha:server:write"
# route -> the scope a PAT needs ("read" stands for the version's read scope).
ROUTE_SCOPES = {"login": "", "list_servers": "read", "patch_server": WRITE_SCOPE, "list_groups": "read",
                "create_group": WRITE_SCOPE, "patch_group": WRITE_SCOPE, "delete_servers": "nezha:inventory:delete"}
_ROUTES = (
    ("POST", re.compile(r"/api/v1/login\Z"), "login"),
    ("GET", re.compile(r"/api/v1/server\Z"), "list_servers"),
    ("PATCH", re.compile(r"/api/v1/server/[^/]{1,40}\Z"), "patch_server"),
    ("GET", re.compile(r"/api/v1/server-group\Z"), "list_groups"),
    ("POST", re.compile(r"/api/v1/server-group\Z"), "create_group"),
    ("PATCH", re.compile(r"/api/v1/server-group/\d{1,18}\Z"), "patch_group"),
    ("POST", re.compile(r"/api/v1/batch-delete/server\Z"), "delete_servers"),
)


@dataclass(frozen=True)
class Request:
    """One REST request as a route handler sees it; `ip` is the WAF's idea of the client."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    ip: str


def _route(method: str, path: str) -> str | None:
    return next((name for verb, pattern, name in _ROUTES if verb == method and pattern.match(path)), None)


def _grants(scopes: tuple[str, ...], wanted: str) -> bool:
    """Whether `scopes` hold `wanted`; `resource:*` covers only its own resource's actions."""
    resource = wanted.rpartition(":")[0]
    return wanted in scopes or f"{resource}:*" in scopes


def _answer(value: dict[str, Any], status: int = 200) -> Any:
    return status, JSON_TYPE, json.dumps(value, separators=(",", ":")).encode()


def _unauthorized() -> Any:
    """The JWT middleware's refusal: HTTP 200, and the realm is the site name, unquoted (observed)."""
    return (200, JSON_TYPE, b'{"error":"ApiErrorUnauthorized"}', {"WWW-Authenticate": f"JWT realm={SITE_NAME}"})


def _credential(request: Request) -> str:
    """The credential a request carries: `Bearer X` (case as sent: the real one is case-sensitive), else nz-jwt."""
    header = request.headers.get("authorization", "")
    return header[len("Bearer "):] if header.startswith("Bearer ") else _cookie(request, "nz-jwt")


def _cookie(request: Request, name: str) -> str:
    for part in request.headers.get("cookie", "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return ""


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


_FORM_TYPES = {"name": str, "note": str, "public_note": str, "display_index": int, "hide_for_guest": bool,
               "enable_ddns": bool, "ddns_profiles": list, "override_ddns_domains": dict}


_GO_TYPES = {"name": "string", "note": "string", "public_note": "string", "display_index": "int",
             "hide_for_guest": "bool", "enable_ddns": "bool", "ddns_profiles": "[]uint64",
             "override_ddns_domains": "map[uint64][]string"}


def _json_kind(value: Any) -> str:
    kinds = ((bool, "bool"), (str, "string"), ((int, float), "number"), (list, "array"), (dict, "object"))
    return next(word for kind, word in kinds if isinstance(value, kind))


def go_json_problem(body: bytes) -> tuple[Any, str | None]:
    """The JSON value of `body`, or the words of Go's decoder for the common malformed bodies (observed:
    `{bad` gives "invalid character 'b' looking for beginning of object key string")."""
    text = body.decode("utf-8", errors="replace")
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text.rstrip()):
            return None, "unexpected end of JSON input"
        looking = "object key string" if exc.msg.startswith("Expecting property name") else "value"
        return None, f"invalid character '{text[exc.pos]}' looking for beginning of {looking}"


def _server_form(body: bytes) -> tuple[dict[str, Any], str | None]:
    """The eight fields PATCH /api/v1/server/:id writes; any left out is reset (observed on v1.14.14-v2.3.7).

    A malformed body or a field of the wrong JSON type: the refusal Go's binding words.
    """
    form, problem = go_json_problem(body)
    if problem is not None:
        return {}, problem
    if not isinstance(form, dict):
        return {}, f"json: cannot unmarshal {_json_kind(form)} into Go value of type model.ServerForm"
    written: dict[str, Any] = {}
    for key, kind in _FORM_TYPES.items():
        value = form.get(key)
        if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
            return {}, (f"json: cannot unmarshal {_json_kind(value)} into Go struct field ServerForm.{key} "
                        f"of type {_GO_TYPES[key]}")
        written[key] = kind() if value is None else value
    return written, None


def _two_words() -> str:
    return f"{secrets.choice(_WORDS_A)}-{secrets.choice(_WORDS_B)}"


def serve_v1(fake: FakeV1, host: str = "127.0.0.1", port: int = 0) -> Running:
    """Start `fake` on host:port in a background thread (fake_v0.s server, duck-typed)."""
    return serve(fake, host, port)  # type: ignore[arg-type]  # FakeV1 has the handle/faults FakeDashboard has


def _first_line(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.readline().rstrip("\n")


def _fake_from(args: Any, parser: Any) -> FakeV1:
    """The fake the command line asks for: credentials come from files, never from argv."""
    secret = _first_line(args.agent_secret_file).strip() if args.agent_secret_file else new_agent_secret()
    fake = FakeV1(profile=args.profile, agent_secrets={secret: 1})
    if args.token_file:
        token = _first_line(args.token_file).strip()
        if not (token.startswith("nzp_") and len(token) == 36 and token[4:].isalnum()) or not fake.has_tokens:
            parser.error("--token-file must hold nzp_ and 32 letters and digits, with --profile v2.1+")
        fake.add_token(value=token)
    if bool(args.username) != bool(args.password_file):
        parser.error("--username and --password-file go together")
    if args.username:
        fake.add_login(1, args.username, _first_line(args.password_file))
    return fake


def main(argv: list[str] | None = None) -> None:
    """Serve a fake v1/v2 dashboard and its release host in the foreground (the first-boot test runs it
    in a network namespace); `--journal`: one JSON line per request, `--enrollments`: one per agent call."""
    import argparse

    from nezha_bootstrap.config import AGENT_V1
    from nezha_bootstrap.testing.fake_v0 import append_json_lines, journal_line

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8008)
    parser.add_argument("--profile", default="v2.1+", choices=PROFILES)
    parser.add_argument("--agent-secret-file", help="file holding the admin's agent secret [default: random]")
    parser.add_argument("--token-file", help="file holding an access token nzp_... the admin may use (v2.1+)")
    parser.add_argument("--username", help="a login of the admin, for `reconcile --username` (with --password-file)")
    parser.add_argument("--password-file", help="file holding that login's password (its first line)")
    parser.add_argument("--release", action="append", help=f"serve this agent version (repeatable) [{AGENT_V1}]")
    parser.add_argument("--journal", help="append one JSON line per request to this file")
    parser.add_argument("--enrollments", help="append one JSON line per agent-connect call to this file")
    args = parser.parse_args(argv)
    fake = _fake_from(args, parser)
    for version in args.release or [AGENT_V1]:
        fake.add_release(version)
    running = serve_v1(fake, args.host, args.port)
    print(json.dumps({"url": running.url, "profile": fake.profile, "releases": args.release or [AGENT_V1]}),
          flush=True)
    seen = joined = 0
    try:
        while True:
            time.sleep(0.2)
            with fake.lock:
                new, seen = fake.journal[seen:], len(fake.journal)
                calls, joined = fake.connections[joined:], len(fake.connections)
                names = {server.id: server.name for server in fake.servers}
            # The hook's body carries the agent secret: the enrollments file has what it tells.
            append_json_lines(args.journal, [{**journal_line(entry), "body": ""} if entry.path == "/_fake/agent-connect"
                                             else journal_line(entry) for entry in new])
            append_json_lines(args.enrollments, [
                {"uuid": call.uuid, "outcome": call.outcome, "server_id": call.server_id,
                 "server_name": names.get(call.server_id or 0), "time": call.at} for call in calls])
    except KeyboardInterrupt:
        running.stop()


if __name__ == "__main__":
    main()
