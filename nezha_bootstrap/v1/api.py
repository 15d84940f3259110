"""The REST API of a v2.1+ dashboard with a personal access token (or of v1/v2 with a JWT login).

Built on http.fetch (the only httpx user: no redirects, capped answers, network failures as
Transient). What the answers mean is dashboard-v1-v2.md ("Personal access tokens", "WAF"):
- 401: the credential is bad, unknown or expired. Never retried: the WAF counts every failure. Except
  `api token lookup failed`: the dashboard's database was busy (TOKEN_LOOKUP_FAILED), retried.
- 403 `ApiErrorForbidden: api token lacks scope S`: the message names S. A 403 HTML page: the WAF.
- HTTP 200 `{"error": ...}`: a handler refused (shown as is, never parsed beyond its prefix).
- 5xx, 429 and network failures: Transient, retried by `with_retries` until the deadline.

Observed on the real v1.14.14, v2.0.14, v2.1.5 and v2.3.7 (tests/data/real, replayed against the fakes by
tests/test_fakes_match_real.py; run again against a live one by tests/live):
- errors carry no `success` key (`{"error": ...}`), so `error` is checked before `success`;
- a bad or unknown access token: HTTP 401 `ApiErrorUnauthorized: invalid api token`; no credential,
  a bad JWT or a login failure: HTTP 200 `ApiErrorUnauthorized` (the JWT middleware);
- the login answers `data.token` and sets the cookie `nz-jwt` (the same JWT) and on v2.1+ `nz-csrf`,
  whose value every JWT write must repeat in `X-CSRF-Token` (else HTTP 403 `ApiErrorForbidden: missing
  or invalid CSRF token`); access tokens need no CSRF. Neither cookie is HttpOnly;
- PATCH /api/v1/server/:id and /api/v1/server-group/:id replace every field they carry (omitted: reset).

Use:
    api = V2Api(client, base_url, token, deadline=60)
    api.servers()                        -> raw items of GET /api/v1/server
    api.prove_write_scope()              -> None, or TokenRefused naming nezha:server:write (writes nothing)
    api.server_by_uuid(uuid)             -> the item, or None (matched client-side: the whole list)
    ServerFinder(api, uuid).first_look() / .look_again()  -> the item, or None (answers small at any fleet size)
    ServerFinder(api, uuid).saved_or_whole_list(server_id)  -> a rerun's row: one `?id=` look by the saved id
    api.update_server(item, {"name": "web-1", "hide_for_guest": True})  -> True when it wrote
    api.find_group("web") / api.find_group(None, group_id=3)            -> Group or None
    api.create_group("web", [ids])       -> id;    api.set_group(id, name, [ids])
    api.join_group(group_id, server_id)  -> True when it wrote (read back, retried with jitter)
    login(client, base_url, username, password, deadline) -> V2Api with a JWT (and CSRF on v2.1+)
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from nezha_bootstrap import redact
from nezha_bootstrap.errors import DashboardRefused, DashboardUnreachable
from nezha_bootstrap.http import ANSWER_CAP, Answer, check_answer, fetch, json_body
from nezha_bootstrap.retry import Notify, Transient, with_retries

if TYPE_CHECKING:
    import httpx  # its one home is http.py; here only for the client's type

LIST_CAP = ANSWER_CAP * 64  # thousands of servers
READ_ONLY_METHOD = "GET"  # a lost answer to any other request may have changed something (Transient.ambiguous)
# Header names match in any case and httpx upper-cases a method, so the case-changing mutants of these
# names are equivalent. A pragma hides every mutant of its line, so each name has a line of its own; its
# other mutant ("XX…XX") was applied by hand and fails tests/test_v2api.py.
PATCH = "PATCH"  # pragma: no mutate - its case mutants are equivalent (above)
POST = "POST"  # pragma: no mutate - its case mutants are equivalent (above)
AUTHORIZATION = "Authorization"  # pragma: no mutate - its case mutants are equivalent (above)
CSRF_HEADER = "X-CSRF-Token"  # pragma: no mutate - its case mutants are equivalent (above)
CONTENT_TYPE = "Content-Type"  # pragma: no mutate - its case mutants are equivalent (above)
# Nothing reads a failed login's `ambiguous` (a retried login creates nothing), so its mutants are equivalent.
LOGIN_AMBIGUOUS = False  # pragma: no mutate - nothing reads it (above)
SCOPE_PROBE = "/api/v1/server/nezha-bootstrap-scope-check"  # no server id: a write there can change nothing
# The eight fields PATCH /api/v1/server/:id overwrites; one left out is reset (name to empty, DDNS off).
FORM_DEFAULTS: dict[str, Any] = {
    "name": "", "note": "", "public_note": "", "display_index": 0, "hide_for_guest": False,
    "enable_ddns": False, "ddns_profiles": [], "override_ddns_domains": {},
}
WAF_NOTE = (
    "Not retrying: the dashboard's WAF counts every failed credential from this address and blocks it "
    "for longer after each (10 failures: about 3 hours)"
)
JOIN_CONFIRMATIONS = 2  # a member must show in this many reads in a row, spaced by a jittered pause
JOIN_PAUSE = (0.3, 1.0)  # seconds: longer than a concurrent client's read-to-PATCH gap on a sane network


class TokenRefused(DashboardRefused):
    """The dashboard refused the credential or its scope: never retried."""


@dataclass(frozen=True)
class Group:
    """One server group of GET /api/v1/server-group: id, name and member server ids."""

    id: int
    name: str
    members: frozenset[int]

    @property
    def servers(self) -> tuple[int, ...]:
        """The member ids, sorted (as a replace-all PATCH sends them)."""
        return tuple(sorted(self.members))


def form_of(item: dict[str, Any]) -> dict[str, Any]:
    """The full PATCH form of a listed server: every field as it is (absent means empty/false)."""
    return {key: item.get(key) if item.get(key) is not None else default for key, default in FORM_DEFAULTS.items()}


# v1.14.14 to v2.3.7 answer any failed database call (a gorm error: sqlite's "database is locked" while a boot
# storm writes) with HTTP 200 {"error": "database error"}, in the dashboard's language (pkg/i18n, v2.3.7; an
# empty translation falls back to English). A busy database is retried like a 5xx. Seen on v2.3.7: the rename
# PATCH of 149 of 5,000 nodes in a storm, which failed those nodes before this.
DATABASE_ERRORS = frozenset({
    "database error", "datenbankfehler", "erro de banco de dados", "error basis data", "error de base de datos",
    "lỗi cơ sở dữ liệu", "ошибка бд", "தரவுத்தள பிழை", "数据库错误", "資料庫錯誤",
})


# A database that answers "database error" this many times without a success in between is not busy but
# broken (a full disk, a read-only file): refused, exit 3, rather than retried until the deadline.
DATABASE_ERRORS_IN_A_ROW = 8


# v2.1.5 to v2.3.7 answer an access token whose lookup failed for another reason than "not found" (sqlite's
# "database is locked" in a boot storm: 1 of 5,000 nodes on v2.3.7) with HTTP 401 and these words, before the
# handler runs and without counting it in the WAF (cmd/dashboard/controller/api_token.go). A busy moment, not a
# bad token: retried like "database error". Their other 401s ("invalid api token", "api token expired", "owner
# of api token not found") stay refusals: the WAF counts those.
TOKEN_LOOKUP_FAILED = "ApiErrorUnauthorized: api token lookup failed"


class DatabaseBusy(Transient):
    """The dashboard answered "database error": retried, and counted (DATABASE_ERRORS_IN_A_ROW)."""


def classify(answer: Answer, what: str, ambiguous: bool = False) -> Any:
    """The `data` of a success answer (None when absent), or raise TokenRefused/DashboardRefused/Transient.

    `ambiguous`: the request may change something, so a busy database's answer (a Transient) says it may
    have been done: a create looks before it tries again."""
    status = answer.status
    value = check_answer(answer, what, LIST_CAP)
    error = value.get("error") if isinstance(value, dict) else None
    if status == 401 and error == TOKEN_LOOKUP_FAILED:  # nothing was done: the handler never ran
        raise DatabaseBusy(f"{what}: the dashboard's database was busy (HTTP 401 {TOKEN_LOOKUP_FAILED!r})")
    if status == 401:  # its words say which refusal it was ("invalid api token", "api token expired", ...)
        said = redact.quote(str(error or "no reason given"), "its words held a credential: not shown")[:200]
        raise TokenRefused(f"{what}: HTTP 401: the dashboard refused the access token (wrong, revoked or "
                           f"expired; it said: {said}). {WAF_NOTE}; create a new token and run again")
    if status == 403:
        raise TokenRefused(_forbidden(what, error, answer))
    if status == 404:
        raise DashboardRefused(f"{what}: HTTP 404: the URL does not point at a v1/v2 dashboard's API")
    if status != 200 or not isinstance(value, dict):
        raise DashboardRefused(f"{what}: HTTP {status}, not the dashboard's JSON answer")
    if isinstance(error, str) and error.startswith("ApiErrorUnauthorized"):
        raise TokenRefused(f"{what}: the dashboard saw no valid credential (a proxy may drop the Authorization "
                           f"header, or the login expired). {WAF_NOTE}")
    if isinstance(error, str) and error.strip().lower() in DATABASE_ERRORS:
        raise DatabaseBusy(f"{what}: the dashboard's database was busy ({error.strip()!r})",  # all under 25 characters
                           ambiguous=ambiguous)
    if error or value.get("success") is not True:
        said = redact.quote(str(error or "no success flag"), "(its words held a credential: not shown)")[:200]
        raise DashboardRefused(f"{what}: the dashboard refused: {said}")
    return value.get("data")


def _forbidden(what: str, error: Any, answer: Answer) -> str:
    prefix = "ApiErrorForbidden: api token lacks scope "
    if isinstance(error, str) and error.startswith(prefix):
        scope = redact.quote(error[len(prefix):].strip(), "(not shown: it held a credential)")[:64]
        return (f"{what}: HTTP 403: the access token lacks scope {scope}; create a token with "
                f"{scope} (documentation: Before you start, v2.1 and newer, Least privilege). Not retrying")
    if b"blocked by nezha WAF" in answer.body:
        return (f"{what}: HTTP 403: the dashboard's WAF blocks this address after failed credentials; "
                "wait, or unblock it in the dashboard's settings. Not retrying")
    said = redact.quote(str(error or "no reason given"), "its words held a credential: not shown")[:200]
    return f"{what}: HTTP 403: access refused ({said}). Not retrying"


@dataclass
class V2Api:
    """One dashboard's REST API with one credential (a PAT, or a JWT with its CSRF value)."""

    client: httpx.Client
    base_url: str
    token: str = field(repr=False)
    deadline: float = 60.0
    csrf: str | None = field(default=None, repr=False)
    notify: Notify = lambda message: None
    rng: random.Random = field(default_factory=random.Random)
    sleep: Callable[[float], None] = time.sleep
    # "database error" answers to each kind of request (`what`) since its last success: a busy database lets
    # reads through while a write keeps failing, so a success of another kind does not count
    database_errors: dict[str, int] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        redact.register(self.token, self.csrf)

    # --- one request ------------------------------------------------------------------------------
    def call(self, method: str, path: str, what: str, body: Any = None, params: dict[str, str] | None = None) -> Any:
        """One request with retries on Transient until the deadline; the answer's `data`."""
        return with_retries(lambda left: self.once(method, path, what, left, body, params), deadline=self.deadline,
                            what=what, give_up=DashboardUnreachable, notify=self.notify)

    def once(self, method: str, path: str, what: str, seconds_left: float, body: Any = None,
             params: dict[str, str] | None = None) -> Any:
        """One request, one attempt: the answer's `data`, or Transient/DashboardRefused."""
        return self._counted(what, lambda: classify(self._send(method, path, seconds_left, body, params), what,
                                                    ambiguous=method != READ_ONLY_METHOD))

    def _counted(self, what: str, attempt: Callable[[], Any]) -> Any:
        """`attempt()`, counting its busy-database answers in a row (DATABASE_ERRORS_IN_A_ROW: then refused)."""
        try:
            data = attempt()
        except DatabaseBusy as busy:
            count = self.database_errors[what] = self.database_errors.get(what, 0) + 1
            if count >= DATABASE_ERRORS_IN_A_ROW:
                raise DashboardRefused(
                    f"{busy}: {count} such answers without a success in between, so not a busy moment: look at "
                    "the dashboard's log (a full disk, a read-only database file?)") from None
            raise
        self.database_errors.pop(what, None)
        return data

    def _send(self, method: str, path: str, seconds_left: float, body: Any = None,
              params: dict[str, str] | None = None) -> Answer:
        headers = {AUTHORIZATION: f"Bearer {self.token}"}
        if self.csrf and method != "GET":
            headers[CSRF_HEADER] = self.csrf
        extra: dict[str, Any] = {"headers": headers, "params": params}
        if body is not None:
            extra["content"] = json.dumps(body,
                                          ensure_ascii=False,  # pragma: no mutate - None is as false as False
                                          ).encode()  # UTF-8
            headers[CONTENT_TYPE] = "application/json"
        return fetch(self.client, method, f"{self.base_url}{path}", seconds_left=seconds_left, cap=LIST_CAP,
                     ambiguous=method != READ_ONLY_METHOD, **extra)

    # --- scopes -----------------------------------------------------------------------------------
    def prove_write_scope(self) -> None:
        """That the credential may change servers and groups (nezha:server:write), with retries on Transient."""
        with_retries(self.write_scope_once, deadline=self.deadline, what="scope check",
                     give_up=DashboardUnreachable, notify=self.notify)

    def write_scope_once(self, seconds_left: float) -> None:
        """One attempt at proving nezha:server:write (`_write_scope`), its busy answers counted as `once` counts."""
        self._counted(
            "scope check",  # pragma: no mutate - the count's key: no other request uses it, any other counts alike
            lambda: self._write_scope(seconds_left))

    def _write_scope(self, seconds_left: float) -> None:
        """One attempt at proving nezha:server:write without writing: PATCH a server id that is not a number.

        The scope middleware answers before the handler: HTTP 403 `api token lacks scope nezha:server:write`
        (TokenRefused, naming it). With the scope, the handler refuses the id before it reads the body or
        the database: HTTP 200 `strconv.ParseUint: parsing "...": invalid syntax` (both observed on the real
        v2.3.7: tests/data/real/v2.3.7.json, "scope check"; a scope refusal is not counted by the WAF).
        """
        answer = self._send(PATCH, SCOPE_PROBE, seconds_left, body={})
        value = json_body(answer.body)[1]
        error = value.get("error") if isinstance(value, dict) else None
        if answer.status == 200 and isinstance(error, str) and error.startswith("strconv.ParseUint"):
            return
        classify(answer, "scope check")  # raises for a refusal (401, 403 naming the scope, 404) or 429/5xx
        raise DashboardRefused(f"scope check: HTTP {answer.status}, not the answer that proves nezha:server:write "
                               f"(PATCH {SCOPE_PROBE} must be refused for its id); is this a v2.1+ dashboard?")

    # --- servers ----------------------------------------------------------------------------------
    def servers(self) -> list[dict[str, Any]]:
        """Every server the credential's user may see (GET /api/v1/server)."""
        data = self.call("GET", "/api/v1/server", "server list")
        if data is None:
            return []
        if not isinstance(data, list):
            raise DashboardRefused("server list: the answer's data is not a list")
        return [item for item in data if isinstance(item, dict) and isinstance(item.get("id"), int)]

    def server_by_uuid(self, uuid: str) -> dict[str, Any] | None:
        """The listed server with exactly this uuid (there is no lookup by uuid: matched here)."""
        return next((item for item in self.servers() if item.get("uuid") == uuid), None)

    def servers_with_ids(self, ids: list[int]) -> list[dict[str, Any]]:
        """GET /api/v1/server?id=1,2,...: the listed servers among `ids`; the whole list when none is."""
        data = self.call("GET", "/api/v1/server", "server list", params={"id": ",".join(map(str, ids))}) or []
        if not isinstance(data, list):
            raise DashboardRefused("server list: the answer's data is not a list")
        return [item for item in data if isinstance(item, dict) and isinstance(item.get("id"), int)]

    def server_by_id(self, server_id: int) -> dict[str, Any] | None:
        # `?id=` with no match returns the whole list: the id is matched here too.
        data = self.call("GET", "/api/v1/server", "server list", params={"id": str(server_id)}) or []
        return next((item for item in data if isinstance(item, dict) and item.get("id") == server_id), None)

    def patch_server(self, server_id: int, form: dict[str, Any]) -> None:
        """Send the full form: every one of the eight fields (a missing one would be reset)."""
        self.call(PATCH,
                  f"/api/v1/server/{server_id}", "server update", body={**FORM_DEFAULTS, **form})

    def update_server(self, item: dict[str, Any], changes: dict[str, Any]) -> bool:
        """Overlay `changes` on the listed `item`, send the full form, read back and compare.

        Returns False without a request when the server already holds `changes`.
        """
        current = form_of(item)
        wanted = {**current, **changes}
        if wanted == current:
            return False
        server_id = int(item["id"])
        self.patch_server(server_id, wanted)
        after = self.server_by_id(server_id)
        if after is None:
            raise DashboardRefused(f"server update: server {server_id} vanished after the update")
        differs = sorted(key for key in changes if form_of(after)[key] != wanted[key])
        if differs:
            raise DashboardRefused(f"server update: server {server_id} did not keep {', '.join(differs)} "
                                   "(read back after the update)")
        return True

    # --- groups -----------------------------------------------------------------------------------
    def groups(self) -> list[Group]:
        """Every group the credential's user may see (GET /api/v1/server-group)."""
        data = self.call("GET", "/api/v1/server-group", "group list") or []
        if not isinstance(data, list):
            raise DashboardRefused("group list: the answer's data is not a list")
        found = []
        for item in data:
            group = item.get("group") if isinstance(item, dict) else None
            if isinstance(group, dict) and isinstance(group.get("id"), int):
                members = frozenset(i for i in item.get("servers") or [] if isinstance(i, int))
                found.append(Group(group["id"], str(group.get("name") or ""), members))
        return found

    def find_group(self, name: str | None, group_id: int | None = None) -> Group | None:
        """The group with `group_id` (its name, if given, must match), else the one group called `name`."""
        groups = self.groups()
        if group_id is not None:
            group = next((g for g in groups if g.id == group_id), None)
            if group is None:
                raise DashboardRefused(f"group: there is no group with id {group_id} (or the token cannot see it)")
            if name is not None and group.name != name:
                raise DashboardRefused(f"group: group {group_id} is called {group.name!r}, not {name!r}")
            return group
        named = [g for g in groups if g.name == name]
        if len(named) > 1:
            ids = ", ".join(str(g.id) for g in named)
            raise DashboardRefused(f"group: {len(named)} groups are called {name!r} (ids {ids}); "
                                   "group names are not unique: give the id as well")
        return named[0] if named else None

    def create_group(self, name: str, servers: list[int]) -> int:
        """Create a group (POST /api/v1/server-group); its id.

        A POST is not idempotent: after an answer lost in transit the group may exist already, so the
        groups are read again and a new one of that name is adopted rather than made twice.
        """
        before = {group.id for group in self.groups() if group.name == name}
        # `suspect = None` is equivalent (as false as False); `suspect = True` fails
        # test_a_group_is_created_with_one_read_and_one_post (checked by hand).
        suspect = False  # pragma: no mutate - None is as false as False (above)

        def attempt(seconds_left: float) -> Any:
            nonlocal suspect
            if suspect:
                made = sorted(group.id for group in self.groups() if group.name == name and group.id not in before)
                if made:
                    return made[0]
            try:  # the POST below either answers or sets `suspect` again
                return self.once(POST,
                                 "/api/v1/server-group", "group create", seconds_left,
                                 body={"name": name, "servers": sorted(set(servers))})
            except Transient as failure:
                suspect = failure.ambiguous
                raise

        data = with_retries(attempt, deadline=self.deadline, what="group create", give_up=DashboardUnreachable,
                            notify=self.notify)
        if not isinstance(data, int):
            raise DashboardRefused("group create: the answer holds no group id")
        return data

    def set_group(self, group_id: int, name: str, servers: list[int]) -> None:
        """Replace a group's name and members (PATCH replaces the whole list)."""
        self.call(PATCH,
                  f"/api/v1/server-group/{group_id}", "group update",
                  body={"name": name, "servers": sorted(set(servers))})

    def join_group(self, group_id: int, server_id: int, deadline: float | None = None,
                   known: Group | None = None) -> bool:
        """Make `server_id` a member of the group and keep it there; True when this call wrote.

        `known`: the group as just read (saves the first read).

        The PATCH replaces the member list, so a node adding itself from a stale read can drop
        another's membership: read back, and PATCH again (jittered) until the member shows in
        JOIN_CONFIRMATIONS reads in a row spaced by JOIN_PAUSE.
        """
        end = time.monotonic() + (self.deadline if deadline is None else deadline)
        wrote = False
        # Before a write, the first read that lists us returns; the write sets `seen` to 0: its start value is
        # never compared, so `seen = 1` is equivalent (None fails test_a_join_that_is_already_done_only_reads).
        seen = 0  # pragma: no mutate - never compared (above)
        # The last write ended in a Transient (it may not have been made). Read only after a write has set it,
        # so its start value is never read (None and True are equivalent mutants).
        failed = False  # pragma: no mutate - never read before the first write sets it (above)
        while True:
            group = known if known is not None and known.id == group_id else self.find_group(None, group_id)
            known = None
            assert group is not None  # find_group raises for an unknown id
            if server_id in group.servers:
                seen += 1
                if seen >= JOIN_CONFIRMATIONS or not wrote:
                    return wrote
            else:
                if wrote and not failed:
                    self.notify(f"group {group.name!r}: a concurrent update dropped this server; adding it again")
                seen, failed = 0, False
                try:  # one attempt: a retry must start from a fresh read, never resend this (maybe stale) list
                    self.once(PATCH, f"/api/v1/server-group/{group_id}", "group update",
                              max(end - time.monotonic(), 0.001),
                              body={"name": group.name, "servers": sorted({*group.servers, server_id})})
                except Transient as failure:
                    self.notify(f"{failure}; reading the group again before writing again")
                    failed = True
                wrote = True  # (after a Transient: maybe) the reads that follow confirm it or write again
            if time.monotonic() >= end:  # pragma: no mutate - `>`: the clock has moved on by the next reading
                raise DashboardUnreachable(f"group {group.name!r}: membership did not hold until the deadline "
                                           "(other clients keep replacing the member list)")
            self.sleep(self.rng.uniform(*JOIN_PAUSE))


def login(client: httpx.Client, base_url: str, username: str, password: str, deadline: float,
          notify: Notify = lambda message: None) -> V2Api:
    """Log in (POST /api/v1/login): a V2Api with the JWT, and on v2.1+ the CSRF value of the nz-csrf cookie."""
    redact.register(password)

    def attempt(seconds_left: float) -> Any:
        answer = fetch(client, POST, f"{base_url}/api/v1/login", seconds_left=seconds_left, cap=ANSWER_CAP,
                       headers={CONTENT_TYPE: "application/json"},
                       content=json.dumps({"username": username, "password": password}).encode(),  # UTF-8
                       ambiguous=LOGIN_AMBIGUOUS,  # pragma: no mutate - nothing reads it (LOGIN_AMBIGUOUS)
                       )
        value = json_body(answer.body)[1]
        error = value.get("error") if isinstance(value, dict) else None
        if answer.status == 200 and isinstance(error, str) and error.startswith("ApiErrorUnauthorized"):
            raise TokenRefused(redact.ours(f"login: wrong username or password. {WAF_NOTE}"))
        return classify(answer, "login")

    data = with_retries(attempt, deadline=deadline, what="login", give_up=DashboardUnreachable, notify=notify)
    token = data.get("token") if isinstance(data, dict) else None
    if not isinstance(token, str) or not token:
        raise DashboardRefused("login: the answer holds no token")
    return V2Api(client, base_url, token, deadline=deadline, csrf=client.cookies.get("nz-csrf"), notify=notify)


# Sampled ids for the first look: 1, 2, 3, 4, 6, 8, 12, ... (about 1.5 apart, 78 ids up to 2**40). A fleet
# whose ids all lie in one band narrower than that (heavy churn) shows none of them: the whole list, once.
ID_SAMPLES = tuple(sorted({*(2 ** k for k in range(41)), *(3 * 2 ** k for k in range(39))}))
WINDOW = 64  # ids per look above the highest seen: an answer holds at most WINDOW + LAG + 1 rows
LAG = 8  # ids just below the highest seen, looked at again: a row may be listed after a higher one
SPREAD = 12  # ids per refining look between the highest id seen and the lowest one asked above it
CATCH_UP = 50  # looks in a row while each answer fills its window (servers enrolling faster than we look)
WHOLE_LIST_AFTER = 15.0  # seconds of looks without our row before the one whole list of the run


@dataclass
class ServerFinder:
    """Finds the row of one uuid with answers whose size does not grow with the fleet.

    The real API filters GET /api/v1/server by id only, never by uuid, and when none of the ids
    exists it answers the whole list (v2.3.7 model/common.go SearchByID; 2.9 MB at 10,000 servers).
    Ids only grow: the table is `id integer PRIMARY KEY AUTOINCREMENT` (observed on v2.3.7), so the
    server an agent creates gets an id above every id listed before. So: find the highest id with a
    sampled look and two or three refining ones (first_look), then look at the ids above it
    (look_again), always with one id seen to exist (`guard`), so that no answer is the whole list.
    A row older than this run (a rerun, or an agent enrolled by an earlier attempt) is found by one
    whole list (`whole_list`), at most once a run.
    """

    api: V2Api
    uuid: str
    clock: Callable[[], float] = time.monotonic
    guard: int | None = None
    top: int = 0
    others: set[int] = field(default_factory=set)  # ids seen with another uuid
    listed_all: bool = False
    started: float | None = None

    def first_look(self) -> dict[str, Any] | None:
        """Before the agent starts: our row if a look shows it, and the highest id (also checks the token)."""
        asked: list[int] = list(ID_SAMPLES)
        while True:
            found = self._look(asked)
            above = min((i for i in asked if i > self.top), default=None)
            if found is not None or self.listed_all or above is None or above - self.top <= WINDOW:
                return found
            step = math.ceil((above - self.top) / SPREAD)
            asked = list(range(self.top + step, above, step))

    def look_again(self) -> dict[str, Any] | None:
        """After the agent starts: the ids above the highest seen (again at once while they keep filling
        the window); the whole list once, when our row has not shown within WHOLE_LIST_AFTER seconds."""
        if self.started is None:
            self.started = self.clock()
        if not self.listed_all and self.clock() - self.started >= WHOLE_LIST_AFTER:
            return self.whole_list()
        for _ in range(CATCH_UP):
            before = self.top
            low = max(before - LAG, 0)
            found = self._look(i for i in range(low + 1, before + WINDOW + 1) if i not in self.others)
            if found is not None:
                return found
            if self.listed_all or self.top < before + WINDOW - LAG:  # all seen, or the window did not fill
                return None
        return None

    def whole_list(self) -> dict[str, Any] | None:
        """The whole list, once: for a row that may be older than the highest id."""
        return self._seen(self.api.servers(), whole=True)

    def saved_or_whole_list(self, server_id: int | None) -> dict[str, Any] | None:
        """A rerun's look: the id an earlier run saved, one small `?id=` answer; the whole list only when
        that id is not ours (another dashboard's). A deleted id costs nothing more: the dashboard answers
        an id it does not have with the whole list, where our row is looked for too."""
        if server_id is not None:
            found = self._look([server_id])
            if found is not None or self.listed_all:
                return found
        return self.whole_list()

    def _look(self, ids: Any) -> dict[str, Any] | None:
        asked = set(ids)
        if self.guard is not None:
            asked.add(self.guard)
        items = self.api.servers_with_ids(sorted(asked))
        return self._seen(items, whole=any(item["id"] not in asked for item in items))

    def _seen(self, items: list[dict[str, Any]], whole: bool) -> dict[str, Any] | None:
        self.listed_all = self.listed_all or whole
        for item in items:
            if item.get("uuid") == self.uuid:
                return item
            self.others.add(item["id"])
        if items:
            self.top = max(self.top, *(item["id"] for item in items))
            self.guard = self.top
        return None
