"""The dashboard client: the answer classifier, fetch's limits, and registration safe against a lost answer."""

from __future__ import annotations

import json
import random
import re
import signal
import ssl
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st

from nezha_bootstrap import __version__
from nezha_bootstrap.errors import DashboardRefused, DashboardUnreachable
from nezha_bootstrap.http import (
    ANSWER_CAP,
    Answer,
    download_context,
    fetch,
    make_client,
    retry_after_seconds,
    tls_context,
)
from nezha_bootstrap.interrupts import Stopped
from nezha_bootstrap.retry import Transient, with_retries
from nezha_bootstrap.testing.fake_v0 import FakeDashboard
from nezha_bootstrap.v0 import api as v0_api
from nezha_bootstrap.v0.api import (
    V1_MESSAGE,
    Dashboard,
    Registration,
    classify_common,
    classify_list,
    classify_register,
)
from tests.conftest import TOKEN

SECRET = "gv4eGLwyvHIR9y5E7p"
JSON = "application/json"
JSON_UTF8 = "application/json; charset=utf-8"
TOKEN_HINT = (
    "Check the token in NEZHA_TOKEN: it must be the whole token from the dashboard's API Token page, "
    "sent as is (no 'Bearer' or 'Token' word)"
)
# The real v0.20.13 with no users row refuses every token with the same body (observed).
NO_USER_HINT = (
    "A dashboard that has no user yet (nobody has logged in since it was installed) refuses every "
    "token this way, a valid one too: log in to the dashboard once, then run again"
)
BASE = "http://dash.test"


def answer(status: int = 200, body: bytes | str = b"", content_type: str = JSON, **extra: Any) -> Answer:
    data = body.encode() if isinstance(body, str) else body
    return Answer(status=status, content_type=content_type, body=data, **extra)


def refusal(classify: Callable[[Answer], Any], given_answer: Answer) -> str:
    with pytest.raises(DashboardRefused) as caught:
        classify(given_answer)
    assert caught.value.exit_code == 3
    return str(caught.value)


# --- classify_register: success -------------------------------------------------------------------

@pytest.mark.parametrize(
    "given_answer",
    [
        pytest.param(answer(body=f'"{SECRET}"'), id="json string literal"),
        pytest.param(answer(body=f' "{SECRET}"\n', content_type=JSON_UTF8), id="json string, whitespace"),
        pytest.param(answer(body=SECRET, content_type="text/plain"), id="bare secret"),
        pytest.param(answer(body=f"{SECRET}\n", content_type=""), id="bare secret, newline"),
        pytest.param(
            answer(body=f'{{"code":200,"message":"Server created successfully","secret":"{SECRET}"}}'),
            id="full answer",
        ),
    ],
)
def test_register_answers_that_carry_a_secret_return_it(given_answer: Answer) -> None:
    assert classify_register(given_answer) == SECRET


# --- classify_register: refusals, each with its message ---------------------------------------

REFUSALS = [
    pytest.param(
        answer(body='{"code":403,"message":"访问此接口需要认证"}', content_type=JSON_UTF8),
        f"register: the dashboard refused the API token (HTTP 200 with a 403 body). {TOKEN_HINT}. {NO_USER_HINT}",
        id="disguised 403",
    ),
    pytest.param(answer(200, '{"error":"404 Not Found"}'), f"register: {V1_MESSAGE}", id="v1.0-v1.4"),
    pytest.param(answer(404, '{"error":"404 Not Found"}'), f"register: {V1_MESSAGE}", id="v1.5+"),
    pytest.param(
        answer(200, '{"error":"real ip header not found"}'),
        "register: the dashboard expects a real-IP header from its reverse proxy and was reached "
        "around that proxy; use the proxied URL",
        id="real ip header",
    ),
    pytest.param(
        answer(404, "<!DOCTYPE html><html><body>404 page not found</body></html>", "text/html"),
        "register: HTTP 404 with an HTML page: the dashboard is older than v0.20.12 (the register "
        "API is needed), or the URL does not point at the dashboard",
        id="404 html: too old",
    ),
    pytest.param(
        answer(404, "404 page not found", "text/plain"),
        "register: HTTP 404: the URL does not point at a v0 dashboard's API",
        id="404 plain",
    ),
    pytest.param(
        answer(400, '{"code":400,"message":"Parse JSON failed","secret":""}'),
        "register: HTTP 400: the dashboard could not parse the request; this is a bug in "
        f"nezha-bootstrap {__version__}, please report it",
        id="400 bug",
    ),
    pytest.param(
        answer(401, "Unauthorized", "text/plain"),
        f"register: HTTP 401: access refused (by the dashboard or a proxy in front of it). {TOKEN_HINT}",
        id="401",
    ),
    pytest.param(
        answer(403, "<html>Forbidden</html>", "text/html"),
        f"register: HTTP 403: access refused (by the dashboard or a proxy in front of it). {TOKEN_HINT}",
        id="403",
    ),
    pytest.param(answer(418, "teapot", "text/plain"), "register: unexpected HTTP 418", id="other 4xx"),
    pytest.param(answer(204), "register: unexpected HTTP 204", id="204"),
    pytest.param(answer(200, ""), "register: HTTP 200 with an empty body, not a secret", id="empty body"),
    pytest.param(answer(200, " \n"), "register: HTTP 200 with an empty body, not a secret", id="blank body"),
    pytest.param(answer(200, '""'), 'register: HTTP 200 with an empty secret ("")', id="empty json string"),
    pytest.param(
        answer(200, '{"code":0,"message":"ok"}'),
        "register: HTTP 200 with a JSON object that holds no secret (code 0)",
        id="json object",
    ),
    pytest.param(
        answer(200, '{"code":500,"message":"x","secret":"' + SECRET + '"}'),
        "register: HTTP 200 with a JSON object that holds no secret (code 500)",
        id="object with a secret but not code 200",
    ),
    pytest.param(answer(200, "[1, 2]"), "register: HTTP 200 with a JSON list, not a secret", id="json list"),
    pytest.param(answer(200, "42"), "register: HTTP 200 with a JSON int, not a secret", id="json number"),
    pytest.param(answer(200, "null"), "register: HTTP 200 with a JSON NoneType, not a secret", id="json null"),
    pytest.param(
        answer(200, '"abc def!"'),
        "register: HTTP 200, but the answer is not a secret of the dashboard's shape "
        "(18 letters and digits; got 8 characters)",
        id="wrong shape",
    ),
    pytest.param(
        answer(200, json.dumps(SECRET + "\n")),
        "register: HTTP 200, but the answer is not a secret of the dashboard's shape "
        "(18 letters and digits; got 19 characters)",
        id="json string with a newline after 18 alnum",
    ),
    pytest.param(
        answer(200, SECRET + "x"),
        "register: HTTP 200, but the answer is not a secret of the dashboard's shape "
        "(18 letters and digits; got 19 characters)",
        id="bare, 19 characters",
    ),
    pytest.param(
        answer(200, b"a" * ANSWER_CAP, truncated=True),
        f"register: the answer (HTTP 200) is larger than {ANSWER_CAP} bytes; this is not the dashboard's "
        "answer (a proxy or portal?); only the first bytes were read",
        id="truncated over the cap",
    ),
    pytest.param(
        answer(200, "<!DOCTYPE html><html><body>Welcome to the portal</body></html>", "text/html"),
        "register: HTTP 200 with an HTML page, not a secret: the URL leads to a web page "
        "(login portal, proxy, or the dashboard's UI), not to the dashboard's API",
        id="html 200",
    ),
    pytest.param(
        answer(200, "<html><body>portal</body></html>", "application/octet-stream"),
        "register: HTTP 200 with an HTML page, not a secret: the URL leads to a web page "
        "(login portal, proxy, or the dashboard's UI), not to the dashboard's API",
        id="html body, other type",
    ),
    pytest.param(
        answer(200, "[" * ANSWER_CAP),
        "register: HTTP 200, but the answer is not a secret of the dashboard's shape "
        f"(18 letters and digits; got {ANSWER_CAP} characters)",
        id="deeply nested",
    ),
]


@pytest.mark.parametrize(("given_answer", "message"), REFUSALS)
def test_register_refusals_say_what_the_dashboard_answered(given_answer: Answer, message: str) -> None:
    assert refusal(classify_register, given_answer) == message


@pytest.mark.parametrize(
    ("status", "location", "shown"),
    [
        (307, "/api/v1/server/register?simple=true", "/api/v1/server/register?simple=true"),
        (301, "https://dash.example.org/api/v1/server/register", "https://dash.example.org/api/v1/server/register"),
        (302, "https://admin:hunter2@evil.example/x", "https://***@evil.example/x"),
        (308, "https://tok@[2001:db8::1]:8443/x", "https://***@[2001:db8::1]:8443/x"),
        (303, None, "(no Location header)"),
        (302, "http://u:p@ss@[::1:8/x", "http://***@[::1:8/x"),
    ],
)
def test_a_redirect_is_refused_naming_its_target_without_credentials(
    status: int, location: str | None, shown: str
) -> None:
    message = refusal(classify_register, answer(status, "", "text/html", location=location))

    assert message == (
        f"register: the dashboard answered HTTP {status} and tried to send the request to {shown}; "
        "it was not followed (a redirect turns the POST into a GET and may carry the token to "
        "another host). Set the dashboard URL to the address it redirects to"
    )
    assert "hunter2" not in message and "admin" not in message and "tok@" not in message


# --- transient answers ------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("status", "retry_after", "message", "seconds", "ambiguous"),
    [
        (429, None, "HTTP 429 (too many requests)", None, False),
        (429, "7", "HTTP 429 (too many requests)", 7.0, False),
        (500, None, "HTTP 500", None, False),
        (503, "120", "HTTP 503", 120.0, False),
        (502, None, "HTTP 502", None, True),
        (504, None, "HTTP 504", None, True),
        (599, None, "HTTP 599", None, False),
    ],
)
def test_5xx_and_429_are_transient(
    status: int, retry_after: str | None, message: str, seconds: float | None, ambiguous: bool
) -> None:
    with pytest.raises(Transient) as caught:
        classify_register(answer(status, "busy", "text/plain", retry_after=retry_after))

    assert (caught.value.message, caught.value.retry_after, caught.value.ambiguous) == (message, seconds, ambiguous)


def test_the_db_failure_answer_with_simple_is_transient() -> None:
    with pytest.raises(Transient) as caught:
        classify_register(answer(500, '""'))

    assert (caught.value.message, caught.value.ambiguous) == ("HTTP 500", False)


def test_retry_after_as_an_http_date_becomes_the_seconds_until_then() -> None:
    now = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    later = format_datetime(now + timedelta(seconds=90), usegmt=True)

    assert retry_after_seconds(later, now=now.timestamp()) == 90.0


def test_a_429_with_an_http_date_carries_the_seconds_until_then() -> None:
    later = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=60), usegmt=True)

    with pytest.raises(Transient) as caught:
        classify_register(answer(429, "", retry_after=later))

    assert caught.value.retry_after is not None and 55 <= caught.value.retry_after <= 60


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None), ("", None), ("0", 0.0), (" 30 ", 30.0), ("soon", None), ("-5", None), ("1.5", None),
        ("²", None), ("Wed, 01 Jan 2020 00:00:00 GMT", 0.0),
    ],
)
def test_retry_after_reads_seconds_or_a_date_and_nothing_else(value: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(value, now=datetime(2025, 1, 1, tzinfo=timezone.utc).timestamp()) == seconds


# --- classify_list and classify_common ---------------------------------------------------------

def test_a_list_answer_gives_its_servers() -> None:
    item = {"id": 1, "name": "a", "tag": "AutoRegister", "last_active": -62135596800}
    body = json.dumps({"code": 0, "message": "success", "result": [item, "junk"]})

    assert classify_list(answer(200, body)) == [item]


@pytest.mark.parametrize(
    ("given_answer", "message"),
    [
        (
            answer(200, '{"code":403,"message":"访问此接口需要认证"}'),
            f"server list: the dashboard refused the API token (HTTP 200 with a 403 body). {TOKEN_HINT}. "
            f"{NO_USER_HINT}",
        ),
        (answer(404, '{"error":"404 Not Found"}'), f"server list: {V1_MESSAGE}"),
        (answer(200, '{"code":0,"message":"success"}'), "server list: HTTP 200, but not the dashboard's list envelope"),
        (answer(200, "[]"), "server list: HTTP 200, but not the dashboard's list envelope"),
        (answer(200, "<html></html>", "text/html"), "server list: HTTP 200, but not the dashboard's list envelope"),
    ],
)
def test_list_refusals(given_answer: Answer, message: str) -> None:
    assert refusal(classify_list, given_answer) == message


def test_classify_common_lets_a_plain_200_through() -> None:
    assert classify_common(answer(200, f'"{SECRET}"'), "anything") is None  # it raises on anything else


# --- property: the classifier never raises anything else, never returns a malformed secret -----

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)
_bodies = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    _json_values.map(lambda v: json.dumps(v).encode()),
    st.text(alphabet="0123456789abcXYZ\n\r\t \"\\", max_size=25).map(str.encode),
    st.from_regex(r"\A[0-9A-Za-z]{17,19}[\n\r\t ]?\Z").map(lambda s: json.dumps(s).encode()),
    st.fixed_dictionaries({"code": st.sampled_from([200, 403, 0]), "secret": st.text(max_size=20)}).map(
        lambda v: json.dumps(v).encode()
    ),
)
_answers = st.builds(
    Answer,
    status=st.integers(min_value=100, max_value=599),
    content_type=st.sampled_from(["", JSON, JSON_UTF8, "text/html", "text/plain"]) | st.text(max_size=20),
    body=_bodies,
    truncated=st.booleans(),
    retry_after=st.none() | st.text(max_size=40),
    location=st.none() | st.text(max_size=40),
)


@settings(max_examples=500, deadline=None)
@given(_answers)
def test_classify_register_only_refuses_retries_or_returns_an_18_alnum_secret(given_answer: Answer) -> None:
    try:
        secret = classify_register(given_answer)
    except (DashboardRefused, Transient):
        return
    assert re.fullmatch(r"[0-9A-Za-z]{18}", secret)


@settings(max_examples=300, deadline=None)
@given(_answers)
def test_classify_list_only_refuses_retries_or_returns_dicts(given_answer: Answer) -> None:
    try:
        servers = classify_list(given_answer)
    except (DashboardRefused, Transient):
        return
    assert all(isinstance(item, dict) for item in servers)


# --- fetch: the size cap and how network failures are translated ------------------------------

def mock_client(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.Client:
    return make_client(transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(("size", "truncated"), [(0, False), (100, False), (1000, False), (1001, True), (10**6, True)])
def test_fetch_reads_at_most_the_cap(size: int, truncated: bool) -> None:
    client = mock_client(lambda request: httpx.Response(200, content=b"a" * size, headers={"Retry-After": "3"}))

    got = fetch(client, "GET", f"{BASE}/x", seconds_left=10, cap=1000, ambiguous=False)

    assert got == Answer(200, "", b"a" * min(size, 1000), truncated, "3", None)


def test_fetch_keeps_status_content_type_and_location() -> None:
    headers = {"Content-Type": "text/html", "Location": "/elsewhere"}
    client = mock_client(lambda request: httpx.Response(307, headers=headers))

    got = fetch(client, "POST", f"{BASE}/x", seconds_left=10, cap=1000, ambiguous=True)

    assert got == Answer(307, "text/html", b"", False, None, "/elsewhere")


def raising(exc: Exception) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


@pytest.mark.parametrize(
    "exc",
    [httpx.ConnectError("Connection refused"), httpx.ConnectTimeout("timed out"),
     httpx.ProxyError("proxy said 502"), httpx.PoolTimeout("pool")],
)
@pytest.mark.parametrize("asked_ambiguous", [True, False])
def test_connect_failures_are_transient_and_never_ambiguous(exc: Exception, asked_ambiguous: bool) -> None:
    with pytest.raises(Transient) as caught:
        fetch(mock_client(raising(exc)), "POST", f"{BASE}/x", seconds_left=10, cap=10, ambiguous=asked_ambiguous)

    assert caught.value.message == f"cannot connect to dash.test:80: {exc}"
    assert caught.value.ambiguous is False


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (httpx.ReadTimeout("read timed out"), "no answer from dash.test in time"),
        (httpx.WriteTimeout("write timed out"), "no answer from dash.test in time"),
        (httpx.ReadError("Connection reset by peer"), "the connection to dash.test broke: Connection reset by peer"),
        (httpx.RemoteProtocolError("Server disconnected"), "the connection to dash.test broke: Server disconnected"),
    ],
)
@pytest.mark.parametrize("asked_ambiguous", [True, False])
def test_failures_after_the_request_was_sent_are_ambiguous_when_asked(
    exc: Exception, message: str, asked_ambiguous: bool
) -> None:
    with pytest.raises(Transient) as caught:
        fetch(mock_client(raising(exc)), "POST", f"{BASE}/x", seconds_left=10, cap=10, ambiguous=asked_ambiguous)

    assert (caught.value.message, caught.value.ambiguous) == (message, asked_ambiguous)


def test_a_body_trickling_in_past_the_time_left_is_an_ambiguous_timeout() -> None:
    def trickle() -> Iterator[bytes]:
        for _ in range(20):
            time.sleep(0.02)
            yield b"a"

    client = mock_client(lambda request: httpx.Response(200, content=trickle()))

    with pytest.raises(Transient) as caught:
        fetch(client, "POST", f"{BASE}/x", seconds_left=0.1, cap=1000, ambiguous=True)

    assert (caught.value.message, caught.value.ambiguous) == ("no answer from dash.test in time", True)


def test_a_certificate_failure_is_a_refusal_pointing_at_the_ca_bundle() -> None:
    text = "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate (_ssl.c:1006)"
    exc = httpx.ConnectError(text)  # how httpx wraps ssl.SSLCertVerificationError
    exc.__cause__ = ssl.SSLCertVerificationError(1, text)

    with pytest.raises(DashboardRefused) as caught:
        fetch(mock_client(raising(exc)), "POST", f"{BASE}/x", seconds_left=10, cap=10, ambiguous=True)

    assert str(caught.value) == (
        f"TLS verification of dash.test failed: {text}. If the dashboard uses a certificate from a private CA, "
        "pass its PEM file with --ca-bundle (NEZHA_CA_BUNDLE); if the host name does not match the certificate, "
        "use the name it was issued for"
    )


# --- Dashboard: the exact requests ---------------------------------------------------------------

def test_register_sends_the_token_as_the_whole_header_and_the_body_as_json() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, text=f'"{SECRET}"')

    body = {"Name": 'web "1" 🚀', "Tag": "prod", "HideForGuest": "off"}
    secret = Dashboard(mock_client(handler), f"{BASE}/nezha", TOKEN).register(body, seconds_left=10)

    [request] = seen
    assert secret == SECRET
    assert (request.method, str(request.url)) == ("POST", f"{BASE}/nezha/api/v1/server/register?simple=true")
    assert request.headers["authorization"] == TOKEN
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == f"nezha-bootstrap/{__version__}"
    assert request.content == json.dumps(body, ensure_ascii=False).encode("utf-8")
    assert json.loads(request.content) == body


def test_servers_lists_by_tag_with_the_token() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, text='{"code":0,"message":"success","result":[{"id":3,"name":"a"}]}')

    servers = Dashboard(mock_client(handler), BASE, TOKEN).servers("my tag", seconds_left=10)

    [request] = seen
    assert servers == [{"id": 3, "name": "a"}]
    assert (request.method, str(request.url)) == ("GET", f"{BASE}/api/v1/server/list?tag=my+tag")
    assert request.headers["authorization"] == TOKEN


# --- Registration against the fake dashboard through a MockTransport ----------------------------

def fake_transport(fake: FakeDashboard) -> httpx.MockTransport:
    """The fake's request handling without sockets; its 'drop' becomes a reset connection."""

    def handler(request: httpx.Request) -> httpx.Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        outcome = fake.handle(request.method, request.url.raw_path.decode(), headers, request.content, "127.0.0.1")
        if outcome == "drop":
            raise httpx.ReadError("Connection reset by peer", request=request)
        if isinstance(outcome, int):
            return httpx.Response(outcome, text=f"status {outcome}")
        status, content_type, body, *extra = outcome
        return httpx.Response(status, headers={"Content-Type": content_type, **(extra[0] if extra else {})},
                              content=body)

    return httpx.MockTransport(handler)


BODY = {"Name": "web-1", "HideForGuest": "on"}
LIST = ("GET", "/api/v1/server/list")
POST = ("POST", "/api/v1/server/register")


def register_with_retries(fake: FakeDashboard, deadline: float = 30) -> str:
    client = make_client(transport=fake_transport(fake))
    registration = Registration(Dashboard(client, BASE, TOKEN), dict(BODY), tag="AutoRegister")
    return with_retries(
        registration.attempt, deadline=deadline, what="register", give_up=DashboardUnreachable,
        notify=lambda message: None, rng=random.Random(1), sleep=lambda seconds: None,
    )


def requests_made(fake: FakeDashboard) -> list[tuple[str, str]]:
    return [(entry.method, entry.path) for entry in fake.journal]


def test_a_clean_registration_lists_once_then_posts_once() -> None:
    fake = FakeDashboard(TOKEN)

    secret = register_with_retries(fake)

    [server] = fake.servers
    assert (secret, server.name) == (server.secret, "web-1")
    assert requests_made(fake) == [LIST, POST]


def test_a_lost_answer_that_created_a_server_stops_naming_the_new_id() -> None:
    fake = FakeDashboard(TOKEN)
    fake.create("web-1")  # an older server of the same name is not this node's
    fake.create("web-1", tag="other")
    fake.faults.lost_response = 1

    with pytest.raises(DashboardRefused) as caught:
        register_with_retries(fake)

    assert str(caught.value) == (
        "register: the answer was lost, and the dashboard now has a new server named 'web-1' under tag "
        "'AutoRegister' (id 3), probably this node's, whose secret never arrived. Not registering again: "
        "delete that server in the dashboard, then run again"
    )
    assert caught.value.exit_code == 3
    assert requests_made(fake) == [LIST, POST, LIST]
    assert len(fake.servers) == 3


@pytest.mark.parametrize("fault", ["drop", 502, 504])
def test_an_ambiguous_failure_that_created_nothing_is_retried_once_more(fault: Any) -> None:
    fake = FakeDashboard(TOKEN)
    fake.create("web-1")
    fake.faults.fail_next = [fault]
    fake.faults.only_paths = ("/api/v1/server/register",)

    secret = register_with_retries(fake)

    old, new = fake.servers
    assert secret == new.secret != old.secret
    assert requests_made(fake) == [LIST, POST, LIST, POST]


@pytest.mark.parametrize("fault", [500, 503, 429])
def test_an_unambiguous_failure_is_retried_without_looking_again(fault: int) -> None:
    fake = FakeDashboard(TOKEN)
    fake.faults.fail_next = [fault, fault]
    fake.faults.only_paths = ("/api/v1/server/register",)

    secret = register_with_retries(fake)

    [server] = fake.servers
    assert secret == server.secret
    assert requests_made(fake) == [LIST, POST, POST, POST]


def test_a_rejected_token_is_never_retried() -> None:
    fake = FakeDashboard("another-token")

    with pytest.raises(DashboardRefused) as caught:
        register_with_retries(fake)

    assert str(caught.value).startswith("server list: the dashboard refused the API token")
    assert requests_made(fake) == [LIST]
    assert fake.servers == []


def test_a_dashboard_failing_until_the_deadline_ends_with_exit_4() -> None:
    fake = FakeDashboard(TOKEN)
    fake.faults.db_failure = True

    with pytest.raises(DashboardUnreachable) as caught:
        register_with_retries(fake, deadline=0.5)

    assert caught.value.exit_code == 4
    assert str(caught.value).startswith("register: HTTP 500; gave up after ")
    assert fake.servers == []


# --- the TLS context: the trust store is read only when a URL needs it ---

HTTP_ONLY = ("http://127.0.0.1:8008", "http://127.0.0.1:8008/install.sh")


def test_tls_context_for_plain_http_urls_loads_no_trust_store_and_still_verifies() -> None:
    context = tls_context(None, HTTP_ONLY)

    assert (context.verify_mode, context.check_hostname) == (ssl.CERT_REQUIRED, True)
    assert context.cert_store_stats()["x509_ca"] == 0  # so any https certificate fails verification


@pytest.mark.parametrize("urls", [
    (),  # URLs not given: the system store, as before
    ("http://dash.test", "https://raw.githubusercontent.com/nezhahq/scripts/x/install.sh"),
    ("HTTPS://dash.test",),
    ("dash.test",),  # not recognisably plain http: load it
])
def test_tls_context_loads_the_system_store_when_a_url_may_need_it(urls: tuple[str, ...]) -> None:
    context = tls_context(None, urls)

    assert (context.verify_mode, context.check_hostname) == (ssl.CERT_REQUIRED, True)
    assert context.cert_store_stats() == ssl.create_default_context().cert_store_stats()


def test_tls_context_always_loads_a_given_ca_bundle(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(bundle))

    context = tls_context(bundle, HTTP_ONLY)

    assert context.cert_store_stats()["x509_ca"] == 1


def test_the_download_context_trusts_the_system_store_and_the_ca_bundle(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(bundle))
    system = ssl.create_default_context().cert_store_stats()["x509_ca"]

    context = download_context(bundle, ("https://github.com/nezhahq/agent/releases/download/v2.3.3/checksums.txt",))

    assert (context.verify_mode, context.check_hostname) == (ssl.CERT_REQUIRED, True)
    assert context.cert_store_stats()["x509_ca"] == system + 1


# --- the v0 client's promises read back: where the token came from, caps, time, the saved secret -----------

REFUSED_TOKEN = httpx.Response(200, text='{"code":403,"message":"forbidden"}')


def test_classify_common_names_nezha_token_when_told_no_other_source() -> None:
    message = refusal(lambda a: classify_common(a, "probe"), answer(200, '{"code":403}'))

    assert message.startswith("probe: the dashboard refused the API token (HTTP 200 with a 403 body). "
                              "Check the token in NEZHA_TOKEN: ")


def call_endpoint(dashboard: Dashboard, call: str) -> Any:
    """One request to the endpoint `call` names."""
    if call == "register":
        return dashboard.register(dict(BODY), seconds_left=5)
    if call == "servers":
        return dashboard.servers("AutoRegister", seconds_left=5)
    if call == "server":
        return dashboard.server(1, seconds_left=5)
    return dashboard.details(range(1, 3), seconds_left=5)


ENDPOINTS = ["register", "servers", "server", "details"]


@pytest.mark.parametrize("call", ENDPOINTS)
def test_a_refused_token_names_the_file_it_came_from_on_every_endpoint(call: str) -> None:
    dashboard = Dashboard(mock_client(lambda request: REFUSED_TOKEN), BASE, TOKEN, source="--token-file /run/tok")

    with pytest.raises(DashboardRefused) as caught:
        call_endpoint(dashboard, call)

    assert "Check the token in --token-file /run/tok: it must be the whole token" in str(caught.value)
    assert "NEZHA_TOKEN" not in str(caught.value)


@pytest.mark.parametrize("call", ENDPOINTS)
def test_a_dashboard_told_no_source_names_nezha_token_in_a_refusal(call: str) -> None:
    dashboard = Dashboard(mock_client(lambda request: REFUSED_TOKEN), BASE, TOKEN)

    with pytest.raises(DashboardRefused) as caught:
        call_endpoint(dashboard, call)

    assert f"{TOKEN_HINT}. {NO_USER_HINT}" in str(caught.value)


def test_a_register_answer_that_is_not_utf8_is_refused_by_its_shape_not_a_crash() -> None:
    message = refusal(classify_register, answer(200, b"\xff\xfe" * 9, content_type="text/plain"))

    assert message == ("register: HTTP 200, but the answer is not a secret of the dashboard's shape "
                       "(18 letters and digits; got 18 characters)")


@pytest.mark.parametrize(("extra", "accepted"), [(0, True), (1, False)])
def test_a_server_list_may_fill_its_cap_and_not_one_byte_more(extra: int, accepted: bool) -> None:
    cap = ANSWER_CAP * 64
    envelope = b'{"code":0,"message":"success","result":[{"id":1,"name":"a"}]}'
    body = envelope + b" " * (cap - len(envelope) + extra)  # JSON may end in blanks
    dashboard = Dashboard(mock_client(lambda request: httpx.Response(200, content=body)), BASE, TOKEN)

    if accepted:
        assert dashboard.servers("AutoRegister", seconds_left=5) == [{"id": 1, "name": "a"}]
    else:
        with pytest.raises(DashboardRefused, match=f"larger than {cap} bytes"):
            dashboard.servers("AutoRegister", seconds_left=5)


@pytest.mark.parametrize(("call", "ambiguous"), [("servers", False), ("server", False), ("details", False),
                                                 ("register", True)])
def test_a_broken_connection_is_ambiguous_for_the_post_only(call: str, ambiguous: bool) -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadError("Connection reset by peer", request=request)

    dashboard = Dashboard(mock_client(broken), BASE, TOKEN)

    with pytest.raises(Transient) as caught:
        call_endpoint(dashboard, call)

    assert caught.value.ambiguous is ambiguous


def test_ids_named_asks_under_the_tag_and_keeps_only_that_name_with_an_integer_id() -> None:
    seen: list[httpx.Request] = []
    listed = [{"id": 3, "name": "web-1"}, {"id": 4, "name": "web-2"}, {"id": "5", "name": "web-1"},
              {"id": 6, "name": "web-1"}, {"name": "web-1"}]

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"code": 0, "result": listed})

    ids = Dashboard(mock_client(handler), BASE, TOKEN).ids_named("web-1", "edge", seconds_left=5)

    assert ids == {3, 6}
    assert [r.url.query for r in seen] == [b"tag=edge"]


class Journal:
    """A MockTransport handler over the fake dashboard that records each request and its read timeout."""

    def __init__(self, fake: FakeDashboard, list_delay: float = 0.0) -> None:
        self.fake, self.list_delay = fake, list_delay
        self.handler = fake_transport(fake).handler  # type: ignore[attr-defined]
        self.timeouts: list[tuple[str, float]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.timeouts.append((request.method, request.extensions["timeout"]["read"]))
        if request.method == "GET":
            time.sleep(self.list_delay)
        return self.handler(request)  # type: ignore[no-any-return]


def registration(journal: Journal, **fields: Any) -> Registration:
    client = make_client(transport=httpx.MockTransport(journal))
    return Registration(Dashboard(client, BASE, TOKEN), {**BODY, "Tag": "edge"}, tag="edge", **fields)


def test_the_pending_record_gets_the_ids_seen_under_the_tag_and_keep_gets_the_secret() -> None:
    fake = FakeDashboard(TOKEN)
    old = [fake.create("web-1", tag="edge").id, fake.create("web-1", tag="edge").id]
    fake.create("web-1")  # another tag
    recorded: list[set[int]] = []
    kept: list[str] = []

    secret = registration(Journal(fake), pending=recorded.append, keep=kept.append).attempt(5)

    assert recorded == [set(old)]
    assert kept == [secret] == [fake.servers[-1].secret]
    assert fake.servers[-1].tag == "edge"


def test_the_post_gets_the_time_the_list_left() -> None:
    journal = Journal(FakeDashboard(TOKEN), list_delay=0.3)

    registration(journal).attempt(0.9)

    [listed, (method, posted)] = journal.timeouts
    assert listed[0] == "GET" and 0.9 - 0.1 < listed[1] <= 0.9
    assert method == "POST" and 0.9 - 0.3 - 0.5 < posted <= 0.9 - 0.3  # 0.5 s for a slow machine


def test_a_lost_answer_names_every_new_id() -> None:
    fake = FakeDashboard(TOKEN)
    fake.faults.lost_response = 1
    attempt = registration(Journal(fake))
    with pytest.raises(Transient):
        attempt.attempt(5)
    fake.create("web-1", tag="edge")  # a second server so named appeared meanwhile

    with pytest.raises(DashboardRefused) as caught:
        attempt.attempt(5)

    assert "(id 1, 2)" in str(caught.value)


def test_after_a_look_that_found_nothing_a_plain_failure_does_not_look_again() -> None:
    fake = FakeDashboard(TOKEN)
    fake.faults.fail_next = ["drop", 503]
    fake.faults.only_paths = ("/api/v1/server/register",)
    attempt = registration(Journal(fake))

    for _ in range(2):
        with pytest.raises(Transient):
            attempt.attempt(5)
        if attempt.suspect:
            continue
    secret = attempt.attempt(5)

    assert secret == fake.servers[-1].secret
    assert attempt.suspect is False
    assert requests_made(fake) == [LIST, POST, LIST, POST, POST]


def test_a_stop_during_the_post_says_the_answer_may_be_lost() -> None:
    def stopped(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            raise Stopped(signal.SIGTERM)
        return httpx.Response(200, json={"code": 0, "result": []})

    client = make_client(transport=httpx.MockTransport(stopped))
    attempt = Registration(Dashboard(client, BASE, TOKEN), dict(BODY), tag="edge")

    with pytest.raises(Stopped) as caught:
        attempt.attempt(5)

    assert (caught.value.signum, caught.value.unanswered, caught.value.exit_code) == (signal.SIGTERM, True, 143)


def test_a_look_that_found_nothing_clears_the_suspicion_before_the_post() -> None:
    fake = FakeDashboard(TOKEN)
    fake.faults.fail_next = ["drop"]
    fake.faults.only_paths = ("/api/v1/server/register",)
    attempt = registration(Journal(fake))
    with pytest.raises(Transient):
        attempt.attempt(5)
    suspected = attempt.suspect

    secret = attempt.attempt(5)

    assert (suspected, attempt.suspect) == (True, False)
    assert secret == fake.servers[-1].secret
    assert requests_made(fake) == [LIST, POST, LIST, POST]


# --- issue 19: the new server's id read by id, not by listing the tag again ---------------------------

def details_asked(fake: FakeDashboard) -> list[str]:
    return [entry.query for entry in fake.journal if entry.path == "/api/v1/server/details"]


def ids(first: int, last: int) -> str:
    return "id=" + ",".join(str(i) for i in range(first, last + 1))


def test_the_registration_keeps_the_highest_id_its_list_showed() -> None:
    fake = FakeDashboard(TOKEN)
    fake.create("web-1", tag="edge")
    fake.create("db-7", tag="edge")  # another name: its id counts as well
    fake.create("web-1", tag="other")  # another tag: not listed

    started = registration(Journal(fake))
    started.attempt(5)

    assert (started.before, started.top) == ({1}, 2)


def test_new_ids_are_read_in_growing_windows_above_the_top_until_one_holds_none() -> None:
    fake = FakeDashboard(TOKEN)
    old = fake.create("web-1", tag="edge").id  # id 1, listed before: not new
    for i in range(20):
        fake.create(f"n-{i}", tag="other" if i % 2 else "edge")  # ids 2-21
    mine = fake.create("web-1", tag="edge").id  # 22
    fake.create("web-1", tag="other")  # 23: the name under another tag is not this node's
    dashboard = Dashboard(make_client(transport=fake_transport(fake)), BASE, TOKEN)

    found = dashboard.new_ids_named("web-1", "edge", above=1, before={old}, seconds_left=5)

    assert found == {mine}
    assert details_asked(fake) == [ids(2, 17), ids(18, 49), ids(50, 113)]


def test_two_new_servers_of_the_name_are_both_named() -> None:
    fake = FakeDashboard(TOKEN)
    made = [fake.create("web-1").id, fake.create("web-1").id]  # two nodes registering the same name at once
    dashboard = Dashboard(make_client(transport=fake_transport(fake)), BASE, TOKEN)

    assert dashboard.new_ids_named("web-1", "AutoRegister", above=0, before=set(), seconds_left=5) == set(made)


def test_new_ids_give_up_after_240_ids_without_reaching_the_end() -> None:
    fake = FakeDashboard(TOKEN)
    for i in range(240):
        fake.create(f"n-{i}", tag="other")
    fake.create("web-1")  # 241: beyond what is read
    dashboard = Dashboard(make_client(transport=fake_transport(fake)), BASE, TOKEN)

    assert dashboard.new_ids_named("web-1", "AutoRegister", above=0, before=set(), seconds_left=5) is None
    assert details_asked(fake) == [ids(1, 16), ids(17, 48), ids(49, 112), ids(113, 240)]


def test_new_ids_are_named_once_an_empty_window_within_240_ids_shows_their_end() -> None:
    fake = FakeDashboard(TOKEN)
    for i in range(100):
        fake.create(f"n-{i}", tag="other")
    mine = fake.create("web-1").id  # 101
    dashboard = Dashboard(make_client(transport=fake_transport(fake)), BASE, TOKEN)

    assert dashboard.new_ids_named("web-1", "AutoRegister", above=0, before=set(), seconds_left=5) == {mine}
    assert details_asked(fake) == [ids(1, 16), ids(17, 48), ids(49, 112), ids(113, 240)]


def test_a_gap_of_deleted_ids_as_wide_as_a_window_gives_no_answer_so_the_tag_is_listed_instead() -> None:
    fake = FakeDashboard(TOKEN)
    for i in range(5):
        fake.create(f"web-{i}", tag="edge")  # ids 1-5, listed before
    for i in range(20):
        fake.delete(fake.create(f"scaled-in-{i}", tag="edge").id)  # ids 6-25, deleted since
    fake.create("web-1", tag="edge")  # 26: this node's server, beyond the gap
    dashboard = Dashboard(make_client(transport=fake_transport(fake)), BASE, TOKEN)

    assert dashboard.new_ids_named("web-1", "edge", above=5, before=set(), seconds_left=5) is None
    assert details_asked(fake) == [ids(6, 21)]


def test_the_fake_answers_details_by_id_as_v0_20_13_does() -> None:
    fake = FakeDashboard(TOKEN)
    for name in ("a", "b", "c"):
        fake.create(name)

    def asked(query: str) -> list[Any]:
        status, _, body = fake.handle("GET", f"/api/v1/server/details?{query}", {"authorization": TOKEN}, b"", "x")
        return [item["id"] for item in json.loads(body)["result"]]

    assert asked("id=3,1,9,1") == [3, 1, 1]  # in the order asked, as often as asked, a missing id skipped
    assert asked("id=%202,2x,-1,2") == [2]  # each word through ParseUint: a bad one is 0, no server's id
    assert asked("id=1&tag=none") == []  # the tag wins
    # a new server's host and status have the keys and values of the real one's (recorded, issue 17)
    recorded = json.loads((Path(__file__).parent / "data/real/v0.20.13.json").read_text(encoding="utf-8"))
    [real] = json.loads(next(e for e in recorded if e["name"] == "details id=1")["response"]["body"])["result"]
    _, _, body = fake.handle("GET", "/api/v1/server/details?id=1", {"authorization": TOKEN}, b"", "x")
    [item] = json.loads(body)["result"]
    assert (item["host"], item["status"]) == (real["host"], real["status"])


# --- server(id), the online wait's look, and the edges of the id search (issue 25) ------------------------

def test_server_gives_the_item_of_that_id_and_none_once_deleted_or_never_made() -> None:
    fake = FakeDashboard(TOKEN)
    made = [fake.create(name, tag="edge").id for name in ("a", "b", "c")]
    fake.delete(made[2])
    dashboard = Dashboard(make_client(transport=fake_transport(fake)), BASE, TOKEN)

    item = dashboard.server(made[1], seconds_left=5)

    assert item is not None and (item["id"], item["name"], item["tag"]) == (made[1], "b", "edge")
    assert dashboard.server(made[2], seconds_left=5) is None  # deleted
    assert dashboard.server(99, seconds_left=5) is None  # never made
    assert details_asked(fake) == [f"id={made[1]}", f"id={made[2]}", "id=99"]


def test_server_asks_for_one_id_with_the_token_and_keeps_only_that_id() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"code": 0, "result": [{"id": 4, "name": "x"}, {"id": 2, "name": "b"}]})

    item = Dashboard(mock_client(handler), BASE, TOKEN).server(2, seconds_left=5)

    [request] = seen
    assert item == {"id": 2, "name": "b"}
    assert (request.method, str(request.url)) == ("GET", f"{BASE}/api/v1/server/details?id=2")
    assert request.headers["authorization"] == TOKEN


def test_server_gives_none_when_the_answer_lists_only_other_ids() -> None:
    listed = httpx.Response(200, json={"code": 0, "result": [{"id": 4, "name": "x"}]})

    assert Dashboard(mock_client(lambda request: listed), BASE, TOKEN).server(2, seconds_left=5) is None


@pytest.mark.parametrize(("call", "cap"), [("server", ANSWER_CAP * 4), ("details", ANSWER_CAP * 64)])
@pytest.mark.parametrize(("extra", "accepted"), [(0, True), (1, False)])
def test_a_details_answer_may_fill_its_cap_and_not_one_byte_more(call: str, cap: int, extra: int,
                                                                 accepted: bool) -> None:
    envelope = b'{"code":0,"message":"success","result":[{"id":1,"name":"a"}]}'
    body = envelope + b" " * (cap - len(envelope) + extra)  # JSON may end in blanks
    dashboard = Dashboard(mock_client(lambda request: httpx.Response(200, content=body)), BASE, TOKEN)

    if accepted:
        assert call_endpoint(dashboard, call) in ({"id": 1, "name": "a"}, [{"id": 1, "name": "a"}])
    else:
        with pytest.raises(DashboardRefused, match=r"\(HTTP 200\) is larger than \d+ bytes"):
            call_endpoint(dashboard, call)


def test_a_survey_of_an_empty_tag_finds_no_name_and_no_highest_id() -> None:
    empty = httpx.Response(200, json={"code": 0, "result": []})

    top = Dashboard(mock_client(lambda request: empty), BASE, TOKEN).survey("web-1", "edge", seconds_left=5)

    assert top == (set(), 0)


@pytest.mark.parametrize(("budget", "windows"), [(17, [(1, 16), (17, 17)]), (20, [(1, 16), (17, 20)])])
def test_the_last_window_is_cut_to_the_id_budget(monkeypatch: pytest.MonkeyPatch, budget: int,
                                                 windows: list[tuple[int, int]]) -> None:
    monkeypatch.setattr(v0_api, "SCAN_IDS", budget)  # 240 is 16 + 32 + 64 + 128: no window is cut there
    fake = FakeDashboard(TOKEN)
    for i in range(budget + 1):
        fake.create(f"n-{i}", tag="other")
    dashboard = Dashboard(make_client(transport=fake_transport(fake)), BASE, TOKEN)

    assert dashboard.new_ids_named("web-1", "AutoRegister", above=0, before=set(), seconds_left=5) is None
    assert details_asked(fake) == [ids(first, last) for first, last in windows]


def test_each_window_is_read_within_the_time_left() -> None:
    seen: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"]["read"])
        return httpx.Response(200, json={"code": 0, "result": []})

    Dashboard(mock_client(handler), BASE, TOKEN).new_ids_named("web-1", "edge", above=0, before=set(),
                                                                seconds_left=0.5)

    [timeout] = seen
    assert 0 < timeout <= 0.5


def test_a_server_found_in_an_early_window_is_kept_while_later_windows_hold_others() -> None:
    fake = FakeDashboard(TOKEN)
    mine = fake.create("web-1").id  # 1, in the first window
    for i in range(19):
        fake.create(f"n-{i}")  # 2-20: the second window holds servers, none of them this node's
    dashboard = Dashboard(make_client(transport=fake_transport(fake)), BASE, TOKEN)

    assert dashboard.new_ids_named("web-1", "AutoRegister", above=0, before=set(), seconds_left=5) == {mine}
    assert details_asked(fake) == [ids(1, 16), ids(17, 48), ids(49, 112)]


def test_an_answered_id_at_or_below_the_top_is_never_new() -> None:
    answers = [[{"id": 5, "name": "web-1", "tag": "edge"}], []]  # id 5 was not asked for: the top is 5

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"code": 0, "result": answers.pop(0)})

    dashboard = Dashboard(mock_client(handler), BASE, TOKEN)

    assert dashboard.new_ids_named("web-1", "edge", above=5, before=set(), seconds_left=5) is None


def test_a_new_registration_has_listed_nothing_and_suspects_nothing() -> None:
    fresh = registration(Journal(FakeDashboard(TOKEN)))

    assert fresh.before is None
    assert fresh.suspect is False
