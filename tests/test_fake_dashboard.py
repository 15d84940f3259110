"""The fake v0 dashboard answers every row of dashboard-v0-register.md's table, over real HTTP."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest

from nezha_bootstrap.testing.fake_v0 import FakeDashboard, Running, Server
from tests.conftest import TOKEN

FORBIDDEN = '{"code":403,"message":"访问此接口需要认证"}'
PARSE_FAILED = '{"code":400,"message":"Parse JSON failed","secret":""}'
V1_BODY = '{"error":"404 Not Found"}'
REGISTER = "/api/v1/server/register"
SECRET = re.compile(r"^[0-9A-Za-z]{18}$")


@pytest.fixture
def http(dashboard: Running) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=dashboard.url, trust_env=False, follow_redirects=False) as client:
        yield client


def register(http: httpx.Client, body: bytes = b"{}", query: str = "simple=true", token: str | None = TOKEN,
             **headers: str) -> httpx.Response:
    sent = dict(headers)
    if token is not None:
        sent["Authorization"] = token
    return http.post(f"{REGISTER}?{query}" if query else REGISTER, content=body, headers=sent)


def only_server(fake: FakeDashboard) -> Server:
    [server] = fake.servers
    return server


# --- authentication: every failure is HTTP 200 with the 403 body, and creates nothing -------------

@pytest.mark.parametrize("token", [None, f"Token {TOKEN}", f"Bearer {TOKEN}", "x" * 32, TOKEN.lower(), TOKEN[:-1]])
def test_register_without_the_exact_token_answers_200_with_the_403_body(
    http: httpx.Client, fake: FakeDashboard, token: str | None
) -> None:
    response = register(http, b'{"Name":"n1"}', token=token)

    assert (response.status_code, response.text) == (200, FORBIDDEN)
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert fake.servers == []


def test_unauthenticated_garbage_gets_the_403_body_not_a_parse_error(http: httpx.Client, fake: FakeDashboard) -> None:
    response = register(http, b"{bad", query="simple=1", token=None)

    assert (response.status_code, response.text) == (200, FORBIDDEN)
    assert fake.servers == []


# --- success --------------------------------------------------------------------------------------

@pytest.mark.parametrize("query", ["simple=1", "simple=true"])
def test_simple_ok_answers_a_json_string_literal_with_its_quotes(
    http: httpx.Client, fake: FakeDashboard, query: str
) -> None:
    response = register(http, b'{"Name":"n1"}', query=query)

    server = only_server(fake)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json; charset=utf-8"  # as the real v0.20.13 sends it
    assert response.text == f'"{server.secret}"'
    assert SECRET.match(server.secret)
    assert (server.name, server.tag, server.note, server.hide_for_guest) == ("n1", "AutoRegister", "", True)


@pytest.mark.parametrize("query", ["", "simple=True", "simple=yes", "simple=0", "simple=", "other=1"])
def test_without_exact_simple_the_answer_is_the_full_json_object(
    http: httpx.Client, fake: FakeDashboard, query: str
) -> None:
    response = register(http, b'{"Name":"n1"}', query=query)

    server = only_server(fake)
    assert response.status_code == 200
    assert response.text == f'{{"code":200,"message":"Server created successfully","secret":"{server.secret}"}}'
    assert SECRET.match(server.secret)


@pytest.mark.parametrize("body", [b"{}", b"null", b' {"Name":null}', b'{"Name":""}'])
def test_defaults_name_is_the_client_ip_tag_autoregister_hidden(
    http: httpx.Client, fake: FakeDashboard, body: bytes
) -> None:
    response = register(http, body)

    server = only_server(fake)
    assert response.status_code == 200
    assert (server.name, server.tag, server.note, server.hide_for_guest) == ("127.0.0.1", "AutoRegister", "", True)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"X-Forwarded-For": "203.0.113.7"}, "203.0.113.7"),
        ({"X-Forwarded-For": "203.0.113.7, 10.0.0.1"}, "203.0.113.7"),
        ({"X-Forwarded-For": "2001:db8::1, 10.0.0.1", "X-Real-IP": "198.51.100.2"}, "2001:db8::1"),
        ({"X-Forwarded-For": "203.0.113.7, proxy.internal", "X-Real-IP": "198.51.100.2"}, "198.51.100.2"),
        ({"X-Real-IP": "198.51.100.2"}, "198.51.100.2"),
        ({"X-Forwarded-For": "not-an-ip"}, "127.0.0.1"),
    ],
)
def test_default_name_follows_forwarded_for_then_real_ip_then_the_peer(
    http: httpx.Client, fake: FakeDashboard, headers: dict[str, str], expected: str
) -> None:
    register(http, b"{}", **headers)

    assert only_server(fake).name == expected


def test_keys_match_case_insensitively_and_unknown_keys_are_ignored(http: httpx.Client, fake: FakeDashboard) -> None:
    body = b'{"name":"x","tag":"t","NOTE":"n","hideforguest":"off","Secret":"AAAAAAAAAAAAAAAAAA"}'

    response = register(http, body)

    server = only_server(fake)
    assert response.status_code == 200
    assert (server.name, server.tag, server.note, server.hide_for_guest) == ("x", "t", "n", False)
    assert server.secret != "AAAAAAAAAAAAAAAAAA"
    assert response.text == f'"{server.secret}"'


@pytest.mark.parametrize(
    ("field", "hidden"),
    [
        ('"HideForGuest":"on",', True),
        ('"HideForGuest":"",', True),
        ("", True),
        ('"HideForGuest":null,', True),
        ('"HideForGuest":"off",', False),
        ('"HideForGuest":"true",', False),
        ('"HideForGuest":"1",', False),
        ('"HideForGuest":"ON",', False),
    ],
)
def test_only_on_empty_absent_or_null_hide_the_server(
    http: httpx.Client, fake: FakeDashboard, field: str, hidden: bool
) -> None:
    response = register(http, ("{" + field + '"Name":"h"}').encode())

    assert response.status_code == 200
    assert only_server(fake).hide_for_guest is hidden


def test_values_are_kept_as_sent_without_trimming_or_limit(http: httpx.Client, fake: FakeDashboard) -> None:
    name = '  a "quoted" name 🚀 ' + "x" * 10_000
    response = register(http, json.dumps({"Name": name}).encode())

    assert response.status_code == 200
    assert only_server(fake).name == name


def test_invalid_utf8_inside_a_string_becomes_the_replacement_character(
    http: httpx.Client, fake: FakeDashboard
) -> None:
    response = register(http, b'{"Name":"a\xffb"}')

    assert response.status_code == 200
    assert only_server(fake).name == "a\ufffdb"


def test_the_same_request_twice_makes_two_servers(http: httpx.Client, fake: FakeDashboard) -> None:
    first = register(http, b'{"Name":"same"}')
    second = register(http, b'{"Name":"same"}')

    one, two = fake.servers
    assert (first.status_code, second.status_code) == (200, 200)
    assert (one.name, two.name) == ("same", "same")
    assert one.id != two.id and one.secret != two.secret
    assert (first.text, second.text) == (f'"{one.secret}"', f'"{two.secret}"')


def test_trailing_garbage_after_one_object_is_accepted(http: httpx.Client, fake: FakeDashboard) -> None:
    response = register(http, b'{"Name":"g"} xyz')

    assert response.status_code == 200
    assert only_server(fake).name == "g"


# --- failures -----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "body", [b"", b"{bad", b"[]", b'"s"', b"42", b'{"Name":123}', b'{"HideForGuest":true}', b"\xff\xfe",
             b"\x0c{}", b"[" * 5000]
)
@pytest.mark.parametrize("query", ["simple=1", ""])
def test_a_body_that_is_not_one_json_object_is_a_400_parse_error(
    http: httpx.Client, fake: FakeDashboard, body: bytes, query: str
) -> None:
    response = register(http, body, query=query)

    assert (response.status_code, response.text) == (400, PARSE_FAILED)
    assert fake.servers == []


def test_database_failure_with_simple_is_500_and_an_empty_json_string(http: httpx.Client, fake: FakeDashboard) -> None:
    fake.faults.db_failure = True

    response = register(http, b'{"Name":"d"}', query="simple=true")

    assert (response.status_code, response.text) == (500, '""')
    assert fake.servers == []


def test_database_failure_without_simple_is_500_and_the_error_object(http: httpx.Client, fake: FakeDashboard) -> None:
    fake.faults.db_failure = True

    response = register(http, b'{"Name":"d"}', query="")

    error = '{"code":500,"message":"Database error: injected","secret":""}'
    assert (response.status_code, response.text) == (500, error)
    assert fake.servers == []


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "OPTIONS", "PATCH"])
@pytest.mark.parametrize("token", [TOKEN, None])
def test_another_method_on_the_register_path_is_a_404_html_page(
    http: httpx.Client, fake: FakeDashboard, method: str, token: str | None
) -> None:
    headers = {"Authorization": token} if token else {}
    response = http.request(method, f"{REGISTER}?simple=true", headers=headers, content=b"{}")

    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")
    assert response.text.lower().startswith("<!doctype html>")
    assert fake.servers == []


def test_head_on_the_register_path_is_404(http: httpx.Client) -> None:
    response = http.head(REGISTER, headers={"Authorization": TOKEN})

    assert (response.status_code, response.headers["content-type"], response.content) == (404, "text/html", b"")


@pytest.mark.parametrize(
    ("target", "location"),
    [
        (f"{REGISTER}/?simple=1", f"{REGISTER}?simple=1"),
        (f"{REGISTER}/", REGISTER),
    ],
)
def test_a_trailing_slash_redirects_307_to_the_path_without_it(
    http: httpx.Client, fake: FakeDashboard, target: str, location: str
) -> None:
    response = http.post(target, headers={"Authorization": TOKEN}, content=b"{}")

    assert (response.status_code, response.headers["location"]) == (307, location)
    assert fake.servers == []


@pytest.mark.parametrize(("generation", "status"), [("v1.0", 200), ("v1.5", 404)])
def test_a_v1_dashboard_answers_the_404_error_object(
    http: httpx.Client, fake: FakeDashboard, generation: str, status: int
) -> None:
    fake.faults.v1 = generation

    response = register(http, b'{"Name":"n"}')
    listed = http.get("/api/v1/server/list", headers={"Authorization": TOKEN})

    assert (response.status_code, response.text) == (status, V1_BODY)
    assert (listed.status_code, listed.text) == (status, V1_BODY)
    assert fake.servers == []


def test_a_v0_older_than_0_20_12_has_no_register_route(http: httpx.Client, fake: FakeDashboard) -> None:
    fake.faults.too_old = True

    response = register(http, b'{"Name":"n"}')

    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")
    assert fake.servers == []


# --- the server list ------------------------------------------------------------------------------

def listed(server: Server) -> dict[str, object]:
    return {
        "id": server.id, "name": server.name, "tag": server.tag, "last_active": -62135596800, "ipv4": "",
        "ipv6": "", "valid_ip": "", "display_index": 0, "hide_for_guest": False,  # never copied (observed)
    }


def test_list_with_a_tag_gives_that_tags_servers_in_id_order(http: httpx.Client, fake: FakeDashboard) -> None:
    for name, tag in [("a", "AutoRegister"), ("b", "other"), ("c", "AutoRegister")]:
        register(http, json.dumps({"Name": name, "Tag": tag}).encode())
    first, _, third = fake.servers

    response = http.get("/api/v1/server/list", params={"tag": "AutoRegister"}, headers={"Authorization": TOKEN})

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    envelope = {"code": 0, "message": "success", "result": [listed(first), listed(third)]}
    assert response.text == json.dumps(envelope, separators=(",", ":"))


def test_list_with_an_unknown_tag_gives_an_empty_result(http: httpx.Client, fake: FakeDashboard) -> None:
    register(http, b'{"Name":"a"}')

    response = http.get("/api/v1/server/list", params={"tag": "no-such-tag"}, headers={"Authorization": TOKEN})

    assert (response.status_code, response.text) == (200, '{"code":0,"message":"success","result":[]}')


def test_list_is_written_like_go_json_compact_utf8_html_safe(http: httpx.Client, fake: FakeDashboard) -> None:
    register(http, json.dumps({"Name": "<a&b> ü"}).encode())

    response = http.get("/api/v1/server/list", headers={"Authorization": TOKEN})

    assert '"name":"\\u003ca\\u0026b\\u003e ü"' in response.text
    assert json.loads(response.text)["result"][0]["name"] == "<a&b> ü"


@pytest.mark.parametrize("token", [None, f"Bearer {TOKEN}", "wrong"])
def test_list_without_the_token_answers_200_with_the_403_body(http: httpx.Client, token: str | None) -> None:
    headers = {"Authorization": token} if token else {}

    response = http.get("/api/v1/server/list", params={"tag": "AutoRegister"}, headers=headers)

    assert (response.status_code, response.text) == (200, FORBIDDEN)


def test_every_request_is_journaled_with_path_query_headers_and_body(http: httpx.Client, fake: FakeDashboard) -> None:
    register(http, b'{"Name":"j"}', query="simple=true")

    [entry] = fake.registrations()
    assert (entry.method, entry.path, entry.query, entry.body) == ("POST", REGISTER, "simple=true", b'{"Name":"j"}')
    assert entry.headers["authorization"] == TOKEN
    assert entry.client == "127.0.0.1"


def test_the_list_never_shows_hidden_but_details_without_parameters_does(http: httpx.Client,
                                                                          fake: FakeDashboard) -> None:
    # Observed on v0.20.13: /list and /details?id= or ?tag= always say hide_for_guest false, display_index 0.
    register(http, b'{"Name":"n1","Tag":"t"}', query="simple=true")
    token = {"Authorization": TOKEN}

    listed = http.get("/api/v1/server/list", headers=token).json()["result"]
    by_id = http.get("/api/v1/server/details", params={"id": "1"}, headers=token).json()["result"]
    everything = http.get("/api/v1/server/details", headers=token).json()["result"]

    assert [(item["hide_for_guest"], item["display_index"]) for item in listed + by_id] == [(False, 0), (False, 0)]
    assert [item["hide_for_guest"] for item in everything] == [True]


def test_without_a_user_every_token_is_refused(http: httpx.Client, fake: FakeDashboard) -> None:
    fake.has_user = False

    answered = http.get("/api/v1/server/list", headers={"Authorization": TOKEN})

    assert (answered.status_code, answered.json()) == (200, {"code": 403, "message": "访问此接口需要认证"})
