"""FakeV1: one fake v1/v2 dashboard and its agent release host, with its state and request dispatch.

`/_fake/agent-connect` stands in for the agent's gRPC enrollment and applies its rules; the REST routes
authenticate (auth.py), then one handler per route answers: servers here, groups in groups.py.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar
from urllib.parse import parse_qs, urlsplit

from nezha_bootstrap.identity import UUID_RE
from nezha_bootstrap.testing.fake_v0 import Faults, Journal, Running, serve
from nezha_bootstrap.testing.fake_v1.auth import Auth
from nezha_bootstrap.testing.fake_v1.groups import Groups, RaceSlot
from nezha_bootstrap.testing.fake_v1.records import (
    Change,
    Connection,
    Token,
    V1Group,
    V1Server,
    new_agent_secret,
    two_words,
    visible,
)
from nezha_bootstrap.testing.fake_v1.releases import ARCHES, release_files
from nezha_bootstrap.testing.fake_v1.versions import PROFILE_VERSIONS, PROFILES
from nezha_bootstrap.testing.fake_v1.waf import WAF_PAGE
from nezha_bootstrap.testing.fake_v1.wire import (
    GUEST,
    REAL_IP_JSON,
    ROUTE_SCOPES,
    Request,
    cookie_of,
    credential_of,
    json_answer,
    route_of,
    server_form,
)


@dataclass
class FakeV1(Groups, Auth):
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
    _race_waiting: list[RaceSlot] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"unknown profile {self.profile!r}; one of {', '.join(PROFILES)}")
        if self.version is None:
            self.version = PROFILE_VERSIONS[self.profile]

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

    def add_release(self, version: str, arches: tuple[str, ...] = ARCHES) -> None:
        """Serve /releases/v<version>/nezha-agent_linux_<arch>.zip and its checksums.txt."""
        self.files.update(release_files(version, arches))

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
        route = route_of(method, path)
        if route is not None:
            return self._rest(route, Request(method, path, query, headers, body, ip))
        return self.other_api(method, path)

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
            self.count_failure(ip, counted=self.counts_jwt_and_agent)
            return "wrong agent secret", None
        if not UUID_RE.match(uuid):
            self.count_failure(ip, counted=self.counts_jwt_and_agent)
            return "malformed uuid", None
        known = next((s for s in self.servers if s.uuid == uuid), None)
        if known is not None:
            if known.owner != owner and self.checks_ownership:
                return "does not belong to the agent secret owner", None
            known.last_active, known.connected = time.time(), True
            return "known", known.id
        server = V1Server(self._next_id, two_words(), uuid, owner, created_at=self.clock(), last_active=time.time(),
                          connected=True)
        self._next_id += 1
        self.servers.append(server)
        return "created", server.id

    # --- the REST API of dashboard-v1-v2.md: auth, then one handler per route ---
    def _rest(self, route: str, request: Request) -> Any:
        if route == "login":
            return self.login(request)
        scope = self.read_scope if ROUTE_SCOPES[route] == "read" else ROUTE_SCOPES[route]
        if route == "list_groups" and not credential_of(request):
            return self._list_groups(request, GUEST)  # guests may (force_auth off, the default)
        user, refusal = self.authenticate(request, scope)
        if refusal is not None:
            return refusal
        handler = getattr(self, f"_{route}")
        answer = handler(request, user)
        if self.has_tokens and route == "list_servers" and not cookie_of(request, "nz-csrf"):
            # v2.1+ hands a CSRF cookie to an authenticated read that came without one (observed on
            # GET /api/v1/server with a JWT or an access token; not on writes nor on the guest routes).
            answer = (*answer[:3], {"Set-Cookie": [f"nz-csrf={secrets.token_urlsafe(24)}; Path=/; SameSite=Strict"]})
        return answer

    def _list_servers(self, request: Request, user: int) -> Any:
        wanted = [int(i) for i in parse_qs(request.query).get("id", [""])[0].split(",") if i.isdigit()]
        with self.lock:
            # The real order (v2.3.7 service/singleton/server.go sortList): display_index high to low,
            # then id; `?id=1,2`: the asked ones with a display_index first, then the rest, each in the
            # order asked (model/common.go searchByIDPri); none of them listed: the whole list.
            servers = sorted(visible(self.servers, self.admins, user), key=lambda s: (-s.display_index, s.id))
            by_id = {s.id: s for s in servers}
            asked = [by_id[i] for i in wanted if i in by_id]
            matched = [s for s in asked if s.display_index] + [s for s in asked if not s.display_index]
            items = [s.listed(self.lists_owner) for s in (matched or servers)]
        return json_answer({"success": True, "data": items} if items else {"success": True})

    def _patch_server(self, request: Request, user: int) -> Any:
        """Id, then the form (Go's binding errors, as the real one words them), then the server."""
        word = request.path.rsplit("/", 1)[1]
        if not word.isdigit():
            return json_answer({"error": f'strconv.ParseUint: parsing "{word}": invalid syntax'})
        server_id = int(word)
        written, problem = server_form(request.body)  # every field, omitted ones at their zero value
        if problem is not None:
            return json_answer({"error": problem})
        with self.lock:
            server = next((s for s in self.servers if s.id == server_id), None)
            if server is None:
                return json_answer({"error": f"server id {server_id} does not exist"})
            if user not in self.admins and server.owner != user:
                return json_answer({"error": "permission denied"})
            for key, value in written.items():
                setattr(server, key, value)
            self.changes.append(Change(self.clock(), server_id, written))
        return json_answer({"success": True})

    def _delete_servers(self, request: Request, user: int) -> Any:
        try:
            ids = set(json.loads(request.body))
        except (ValueError, TypeError):
            return json_answer({"error": "invalid request body"})
        with self.lock:
            self.servers = [s for s in self.servers if s.id not in ids or (user not in self.admins and s.owner != user)]
        return json_answer({"success": True})


def serve_v1(fake: FakeV1, host: str = "127.0.0.1", port: int = 0) -> Running:
    """Start `fake` on host:port in a background thread (fake_v0.s server, duck-typed)."""
    return serve(fake, host, port)  # type: ignore[arg-type]  # FakeV1 has the handle/faults FakeDashboard has

