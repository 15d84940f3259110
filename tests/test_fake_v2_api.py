"""The fake v1/v2 dashboard's REST API answers as dashboard-v1-v2.md says: tokens, PATCH, groups, WAF, login.

Error bodies, texts, item keys and cookies are the real dashboards' (tests/test_fakes_match_real.py replays
what they answered); these tests were changed where they encoded the fake's earlier guesses.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from nezha_bootstrap.testing.fake_v0 import Running
from nezha_bootstrap.testing.fake_v1 import FakeV1, serve_v1

UUID_A = "8d3b2c6e-0f41-5a6b-9c7d-1e2f3a4b5c6d"
UUID_B = "1d3b2c6e-0f41-5a6b-9c7d-1e2f3a4b5c6d"


@pytest.fixture
def fake() -> FakeV1:
    return FakeV1(profile="v2.1+")


@pytest.fixture
def running(fake: FakeV1) -> Iterator[Running]:
    with serve_v1(fake) as served:
        yield served


@pytest.fixture
def http(running: Running) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=running.url, trust_env=False) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def enroll(http: httpx.Client, uuid: str, secret: str) -> int:
    return int(http.post("/_fake/agent-connect", json={"uuid": uuid, "secret": secret}).json()["id"])


def answer(response: httpx.Response) -> tuple[int, Any]:
    return response.status_code, response.json()


RECORD_KEYS = ("created_at", "updated_at", "host", "state", "geoip", "last_active", "owner")


def fields(item: dict[str, Any]) -> dict[str, Any]:
    """A server item without what the dashboard keeps of its own (times, agent reports, owner)."""
    return {key: value for key, value in item.items() if key not in RECORD_KEYS}


def group_fields(item: dict[str, Any]) -> dict[str, Any]:
    return {"group": {k: v for k, v in item["group"].items() if k not in RECORD_KEYS}, "servers": item["servers"]}


FULL_FORM = {"name": "web-1", "note": "n", "public_note": "p", "display_index": 3, "hide_for_guest": True,
             "enable_ddns": True, "ddns_profiles": [1], "override_ddns_domains": {"1": ["a.example"]}}


# --- tokens --------------------------------------------------------------------------------------

def test_the_server_list_shows_the_fixed_fields_and_omits_empty_ones(fake: FakeV1, http: httpx.Client) -> None:
    enroll(http, UUID_A, fake.agent_secret)
    token = fake.add_token()

    status, body = answer(http.get("/api/v1/server", headers=bearer(token)))

    assert status == 200
    [item] = body["data"]
    assert fields(item) == {"id": 1, "name": fake.servers[0].name, "uuid": UUID_A, "display_index": 0}
    assert list(item) == ["id", "created_at", "updated_at", "name", "uuid", "display_index", "host", "state",
                          "geoip", "last_active", "owner"]  # the real v2.x order (owner from v2.0.14)


def test_an_empty_list_has_no_data(fake: FakeV1, http: httpx.Client) -> None:
    assert answer(http.get("/api/v1/server", headers=bearer(fake.add_token()))) == (200, {"success": True})


def test_id_with_no_match_returns_the_whole_list(fake: FakeV1, http: httpx.Client) -> None:
    enroll(http, UUID_A, fake.agent_secret)
    enroll(http, UUID_B, fake.agent_secret)
    token = fake.add_token()

    everything = http.get("/api/v1/server", params={"id": "99"}, headers=bearer(token)).json()["data"]
    one = http.get("/api/v1/server", params={"id": "2"}, headers=bearer(token)).json()["data"]

    assert [item["uuid"] for item in everything] == [UUID_A, UUID_B]
    assert [item["uuid"] for item in one] == [UUID_B]


@pytest.mark.parametrize("credential", [
    "nzp_" + "x" * 32,  # unknown
    "expired",
])
def test_a_bad_or_expired_token_is_401_and_counted(fake: FakeV1, http: httpx.Client, credential: str) -> None:
    if credential == "expired":
        credential = fake.add_token(expires_in=-1)

    status, body = answer(http.get("/api/v1/server", headers=bearer(credential)))

    assert (status, body) == (401, {"error": "ApiErrorUnauthorized: invalid api token"})
    assert fake.failed_credentials == 1


@pytest.mark.parametrize("headers", [{}, {"Authorization": "bearer nzp_" + "x" * 32}])
def test_no_credential_is_an_http_200_unauthorized_and_not_counted(fake: FakeV1, http: httpx.Client,
                                                                   headers: dict[str, str]) -> None:
    status, body = answer(http.get("/api/v1/server", headers=headers))

    assert (status, body) == (200, {"error": "ApiErrorUnauthorized"})
    assert fake.failed_credentials == 0


@pytest.mark.parametrize(("version", "scopes", "granted"), [
    ((2, 3, 1), ("nezha:inventory:read",), True),
    ((2, 3, 1), ("nezha:inventory:*",), True),
    ((2, 3, 1), ("nezha:server:*",), False),  # a wildcard covers only its own resource
    ((2, 3, 1), ("nezha:server:read",), False),
    ((2, 1, 0), ("nezha:server:read",), True),
    ((2, 1, 1), ("nezha:server:*",), True),
    ((2, 1, 1), ("nezha:inventory:read",), False),
])
def test_listing_needs_the_read_scope_named_as_the_version_names_it(
        version: tuple[int, int, int], scopes: tuple[str, ...], granted: bool) -> None:
    fake = FakeV1(profile="v2.1+", version=version)
    token = fake.add_token(scopes=scopes)
    with serve_v1(fake) as running, httpx.Client(base_url=running.url, trust_env=False) as http:
        status, body = answer(http.get("/api/v1/server", headers=bearer(token)))
    if granted:
        assert (status, body) == (200, {"success": True})
    else:
        assert (status, body) == (403, {"error": f"ApiErrorForbidden: api token lacks scope {fake.read_scope}"})
    assert fake.failed_credentials == 0


def test_a_read_only_token_cannot_patch(fake: FakeV1, http: httpx.Client) -> None:
    enroll(http, UUID_A, fake.agent_secret)
    token = fake.add_token(scopes=("nezha:inventory:read",))

    status, body = answer(http.patch("/api/v1/server/1", json=FULL_FORM, headers=bearer(token)))

    assert (status, body) == (403, {"error": "ApiErrorForbidden: api token lacks scope "
                                                               "nezha:server:write"})


def test_profiles_before_v2_1_have_no_tokens() -> None:
    with pytest.raises(ValueError, match="no personal access tokens"):
        FakeV1(profile="v2.0").add_token()


def test_a_member_sees_only_its_own_servers(fake: FakeV1, http: httpx.Client) -> None:
    member_secret = fake.add_user()
    enroll(http, UUID_A, fake.agent_secret)
    enroll(http, UUID_B, member_secret)
    member = fake.add_token(user=fake.user_of(member_secret))
    admin = fake.add_token()

    mine = http.get("/api/v1/server", headers=bearer(member)).json()["data"]
    everything = http.get("/api/v1/server", headers=bearer(admin)).json()["data"]
    refused = answer(http.patch("/api/v1/server/1", json=FULL_FORM, headers=bearer(member)))

    assert [item["uuid"] for item in mine] == [UUID_B]
    assert [item["uuid"] for item in everything] == [UUID_A, UUID_B]
    assert refused == (200, {"error": "permission denied"})


# --- PATCH overwrites every field ----------------------------------------------------------------

def test_patch_writes_all_eight_fields_and_the_list_shows_them(fake: FakeV1, http: httpx.Client) -> None:
    enroll(http, UUID_A, fake.agent_secret)
    token = fake.add_token()

    assert answer(http.patch("/api/v1/server/1", json=FULL_FORM, headers=bearer(token))) == (200, {"success": True})

    [item] = http.get("/api/v1/server", headers=bearer(token)).json()["data"]
    assert fields(item) == {"id": 1, "uuid": UUID_A, **FULL_FORM}


def test_patch_resets_the_fields_it_leaves_out(fake: FakeV1, http: httpx.Client) -> None:
    enroll(http, UUID_A, fake.agent_secret)
    token = fake.add_token()
    http.patch("/api/v1/server/1", json=FULL_FORM, headers=bearer(token))

    http.patch("/api/v1/server/1", json={"note": "only this"}, headers=bearer(token))

    [item] = http.get("/api/v1/server", headers=bearer(token)).json()["data"]
    assert fields(item) == {"id": 1, "name": "", "uuid": UUID_A, "display_index": 0, "note": "only this"}
    assert [c.fields["name"] for c in fake.changes] == ["web-1", ""]


@pytest.mark.parametrize(("path", "body", "error"), [
    ("/api/v1/server/9", FULL_FORM, "server id 9 does not exist"),
    ("/api/v1/server/1", {**FULL_FORM, "display_index": "3"},
     "json: cannot unmarshal string into Go struct field ServerForm.display_index of type int"),
    ("/api/v1/server/abc", FULL_FORM, 'strconv.ParseUint: parsing "abc": invalid syntax'),
])
def test_patch_errors_are_http_200(fake: FakeV1, http: httpx.Client, path: str, body: dict[str, Any],
                                   error: str) -> None:
    enroll(http, UUID_A, fake.agent_secret)
    assert answer(http.patch(path, json=body, headers=bearer(fake.add_token()))) == (
        200, {"error": error})


def test_the_guest_view_leaves_hidden_servers_out(fake: FakeV1, http: httpx.Client) -> None:
    enroll(http, UUID_A, fake.agent_secret)
    enroll(http, UUID_B, fake.agent_secret)
    http.patch("/api/v1/server/1", json=FULL_FORM, headers=bearer(fake.add_token()))

    assert fake.guest_view() == [{"id": 2, "name": fake.servers[1].name, "public_note": ""}]


# --- groups --------------------------------------------------------------------------------------

def test_groups_are_created_listed_and_replaced(fake: FakeV1, http: httpx.Client) -> None:
    enroll(http, UUID_A, fake.agent_secret)
    enroll(http, UUID_B, fake.agent_secret)
    token = fake.add_token()

    created = answer(http.post("/api/v1/server-group", json={"name": "web", "servers": [2, 1, 2]},
                               headers=bearer(token)))
    http.post("/api/v1/server-group", json={"name": "web", "servers": []}, headers=bearer(token))  # names repeat
    replaced = answer(http.patch("/api/v1/server-group/1", json={"name": "web", "servers": [2]},
                                 headers=bearer(token)))
    listed = http.get("/api/v1/server-group", headers=bearer(token)).json()

    assert created == (200, {"success": True, "data": 1})
    assert replaced == (200, {"success": True})
    assert [group_fields(item) for item in listed["data"]] == [
        {"group": {"id": 1, "name": "web"}, "servers": [2]},
        {"group": {"id": 2, "name": "web"}, "servers": None},
    ]
    assert list(listed["data"][0]["group"]) == ["id", "created_at", "updated_at", "name"]  # no user_id


def test_a_group_member_must_be_an_existing_server(fake: FakeV1, http: httpx.Client) -> None:
    token = fake.add_token()
    assert answer(http.post("/api/v1/server-group", json={"name": "web", "servers": [7]}, headers=bearer(token))) == (
        200, {"error": "have invalid server id"})
    assert fake.groups == []


def test_a_group_write_without_a_name_empties_the_name(fake: FakeV1, http: httpx.Client) -> None:
    token = fake.add_token()
    http.post("/api/v1/server-group", json={"name": "web"}, headers=bearer(token))

    patched = answer(http.patch("/api/v1/server-group/1", json={"servers": []}, headers=bearer(token)))

    assert patched == (200, {"success": True})
    assert fake.groups[0].name == ""  # replace-all of both fields, as the real one does


def test_a_guest_lists_only_groups_with_servers_it_sees(fake: FakeV1, http: httpx.Client) -> None:
    enroll(http, UUID_A, fake.agent_secret)
    enroll(http, UUID_B, fake.agent_secret)
    http.patch("/api/v1/server/1", json=FULL_FORM, headers=bearer(fake.add_token()))  # hides server 1
    fake.add_group("hidden-only", (1,))
    fake.add_group("mixed", (1, 2))

    listed = http.get("/api/v1/server-group").json()

    assert [group_fields(item) for item in listed["data"]] == [{"group": {"id": 2, "name": "mixed"}, "servers": [2]}]


def read_modify_write(http: httpx.Client, token: str, server_id: int) -> None:
    [entry] = http.get("/api/v1/server-group", headers=bearer(token)).json()["data"]
    members = sorted(set((entry["servers"] or []) + [server_id]))
    http.patch("/api/v1/server-group/1", json={"name": "web", "servers": members}, headers=bearer(token))


@pytest.mark.parametrize(("race", "members"), [(True, 1), (False, 2)])
def test_the_race_switch_makes_two_concurrent_joins_lose_one(fake: FakeV1, running: Running, race: bool,
                                                             members: int) -> None:
    fake.group_race, fake.race_window = race, 5.0
    secret = fake.agent_secret
    with httpx.Client(base_url=running.url, trust_env=False) as http:
        ids = [enroll(http, UUID_A, secret), enroll(http, UUID_B, secret)]
    fake.add_group("web")
    token = fake.add_token()

    def join(server_id: int) -> None:
        with httpx.Client(base_url=running.url, trust_env=False) as http:
            read_modify_write(http, token, server_id)

    threads = [threading.Thread(target=join, args=(i,)) for i in ids]
    if race:
        for thread in threads:
            thread.start()
    for thread in threads:
        if not race:
            thread.start()
        thread.join(10)

    assert len(fake.groups[0].servers) == members


def direct(fake: FakeV1, method: str, path: str, token: str, body: Any = None) -> Any:
    """One request straight to `fake.handle`, no sockets; its decoded JSON answer."""
    answered = fake.handle(method, path, {"authorization": f"Bearer {token}"},
                           b"" if body is None else json.dumps(body).encode(), "127.0.0.1")
    return json.loads(answered[2])


def test_a_paired_group_read_answers_the_group_as_it_was_when_its_partner_came(fake: FakeV1) -> None:
    # No sockets: the partner's PATCH follows its GET at once, before the waiting read's thread runs again.
    # A waiter that read the group only then would see that member; it must answer the snapshot of the pairing.
    fake.group_race, fake.race_window = True, 5.0
    token = fake.add_token()
    server_id = direct(fake, "POST", "/_fake/agent-connect", token, {"uuid": UUID_A, "secret": fake.agent_secret})["id"]
    fake.add_group("web")
    answers: list[Any] = []
    waiter = threading.Thread(target=lambda: answers.append(direct(fake, "GET", "/api/v1/server-group", token)))
    waiter.start()
    deadline = time.monotonic() + 5
    while not any(j.method == "GET" for j in fake.journal) and time.monotonic() < deadline:  # the waiter's is in
        time.sleep(0.001)

    answers.append(direct(fake, "GET", "/api/v1/server-group", token))
    patched = direct(fake, "PATCH", "/api/v1/server-group/1", token, {"name": "web", "servers": [server_id]})
    waiter.join(10)

    old = [{"group": {"id": 1, "name": "web"}, "servers": None}]
    assert [[group_fields(item) for item in got["data"]] for got in answers] == [old, old]
    assert patched == {"success": True}
    assert fake.groups[0].servers == [server_id]


# --- WAF and login -------------------------------------------------------------------------------

def test_the_waf_blocks_an_ip_after_a_failure_for_count_to_the_fourth() -> None:
    now = [1000.0]
    fake = FakeV1(profile="v2.1+", real_ip_header="X-Real-IP", clock=lambda: now[0])
    good = fake.add_token()
    with serve_v1(fake) as running, httpx.Client(base_url=running.url, trust_env=False) as http:
        ip = {"X-Real-IP": "203.0.113.5"}
        first = http.get("/api/v1/server", headers={**ip, **bearer("nzp_" + "x" * 32)}).status_code
        blocked = http.get("/api/v1/setting", headers=ip)
        other_ip = http.get("/api/v1/server", headers={"X-Real-IP": "203.0.113.6", **bearer(good)}).status_code
        now[0] += 3.1
        http.get("/api/v1/server", headers={**ip, **bearer("nzp_" + "y" * 32)})  # second failure: 16 s
        now[0] += 15
        still = http.get("/api/v1/server", headers={**ip, **bearer(good)}).status_code
        now[0] += 1.1
        free = http.get("/api/v1/server", headers={**ip, **bearer(good)}).status_code

    assert first == 401
    assert (blocked.status_code, "blocked by nezha WAF" in blocked.text) == (403, True)
    assert (other_ip, still, free) == (200, 403, 200)
    assert fake.waf["203.0.113.5"][0] == 2


def test_without_a_real_ip_header_nothing_is_blocked(fake: FakeV1, http: httpx.Client) -> None:
    for _ in range(3):
        http.get("/api/v1/server", headers=bearer("nzp_" + "x" * 32))
    assert http.get("/api/v1/server", headers=bearer(fake.add_token())).status_code == 200
    assert fake.failed_credentials == 3


@pytest.mark.parametrize(("profile", "csrf"), [("v2.1+", True), ("v2.0", False), ("v1.5-1.14", False)])
def test_a_login_gets_a_jwt_and_on_v2_1_a_csrf_pair(profile: str, csrf: bool) -> None:
    fake = FakeV1(profile=profile)
    fake.add_login(1, "admin", "pw-of-admin")
    with serve_v1(fake) as running, httpx.Client(base_url=running.url, trust_env=False) as http:
        enroll(http, UUID_A, fake.agent_secret)
        wrong = answer(http.post("/api/v1/login", json={"username": "admin", "password": "nope"}))
        login = http.post("/api/v1/login", json={"username": "admin", "password": "pw-of-admin"})
        jwt = login.json()["data"]["token"]
        listed = http.get("/api/v1/server", headers=bearer(jwt)).json()["data"]
        without = answer(http.patch("/api/v1/server/1", json=FULL_FORM, headers=bearer(jwt)))
        with_pair = answer(http.patch("/api/v1/server/1", json=FULL_FORM,
                                      headers={**bearer(jwt), "X-CSRF-Token": login.cookies.get("nz-csrf") or ""}))

    assert wrong == (200, {"error": "ApiErrorUnauthorized"})
    assert [item["uuid"] for item in listed] == [UUID_A]
    assert ("nz-csrf" in login.cookies) is csrf
    if csrf:
        assert without == (403, {"error": "ApiErrorForbidden: missing or invalid CSRF token"})
    else:
        assert without == (200, {"success": True})
    assert with_pair == (200, {"success": True})
    assert fake.failed_credentials == 1


@pytest.mark.parametrize(("version", "counted"), [((1, 14, 14), False), ((2, 3, 7), True)])
def test_the_waf_of_v1_counts_neither_bad_jwts_nor_wrong_agent_secrets(version: tuple[int, int, int],
                                                                       counted: bool) -> None:
    # Observed: v1.14.14 let a garbage JWT and an agent with a wrong secret through; v2.3.7 blocked both.
    fake = FakeV1(profile="v1.5-1.14" if version < (2, 0, 0) else "v2.1+", version=version,
                  real_ip_header="X-Real-IP")
    headers = {"x-real-ip": "203.0.113.5"}
    fake.handle("GET", "/api/v1/server", {**headers, "authorization": "Bearer garbage"}, b"", "")
    after_jwt = fake.waf.pop("203.0.113.5", (0, 0.0))[0]  # and unblocked, for the second failure
    fake.handle("POST", "/_fake/agent-connect", headers, json.dumps({"uuid": UUID_A, "secret": "wrong"}).encode(), "")
    after_agent = fake.waf.get("203.0.113.5", (0, 0.0))[0]

    assert fake.failed_credentials == 2
    assert (after_jwt, after_agent) == ((1, 1) if counted else (0, 0))


def test_a_good_login_forgets_the_login_failures_but_not_the_others() -> None:
    now = [1000.0]
    fake = FakeV1(profile="v2.1+", real_ip_header="X-Real-IP", clock=lambda: now[0])
    fake.add_login(1, "admin", "pw")
    headers = {"x-real-ip": "203.0.113.5"}

    def login(password: str) -> None:
        fake.handle("POST", "/api/v1/login", headers, json.dumps({"username": "admin", "password": password}).encode(),
                    "")

    login("wrong")
    now[0] += 4
    fake.handle("GET", "/api/v1/server", {**headers, "authorization": "Bearer nzp_" + "x" * 32}, b"", "")
    now[0] += 17
    login("pw")

    assert fake.waf["203.0.113.5"][0] == 1  # the PAT failure still counts: the next failure blocks for 16 s
