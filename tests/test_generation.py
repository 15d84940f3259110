"""Generation detection: the credential-free probes of dashboard-v1-v2.md's table, per profile."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from nezha_bootstrap.errors import DashboardRefused
from nezha_bootstrap.generation import (
    REAL_IP_MESSAGE,
    TOO_OLD_MESSAGE,
    Generation,
    Probe,
    Reply,
    classify,
    detect,
    http_sender,
)
from nezha_bootstrap.http import make_client
from nezha_bootstrap.retry import Transient
from nezha_bootstrap.testing.fake_v0 import FakeDashboard, Running, serve
from nezha_bootstrap.testing.fake_v1 import PROFILES, FakeV1, serve_v1
from tests.conftest import TOKEN


def detect_at(running: Running) -> Generation:
    with make_client() as client:
        return detect(http_sender(client, running.url), 10.0)


@pytest.mark.parametrize(("profile", "expected"), [
    ("v1.0-1.4", Generation.V1_0),
    ("v1.5-1.14", Generation.V1_5),
    ("v2.0", Generation.V2_0),
    ("v2.1+", Generation.V2_1),
])
def test_each_v1_v2_profile_is_told_apart(profile: str, expected: Generation) -> None:
    fake = FakeV1(profile=profile)
    with serve_v1(fake) as running:
        assert detect_at(running) is expected
    assert [(j.method, j.path) for j in fake.journal] == [
        ("GET", "/api/v1/setting"), ("POST", "/api/v1/server/register"), ("GET", "/api/v1/api-tokens"),
    ]
    assert all("authorization" not in j.headers for j in fake.journal)  # nothing the WAF could count
    assert fake.failed_credentials == 0


def test_the_fake_v1_profiles_cover_the_table() -> None:
    assert PROFILES == ("v1.0-1.4", "v1.5-1.14", "v2.0", "v2.1+")


def test_a_v0_dashboard_is_v0_and_gains_no_server() -> None:
    fake = FakeDashboard(TOKEN)
    with serve(fake) as running:
        assert detect_at(running) is Generation.V0
    assert fake.servers == []


def test_a_v0_dashboard_older_than_0_20_12_gets_its_own_message() -> None:
    fake = FakeDashboard(TOKEN)
    fake.faults.too_old = True
    with serve(fake) as running, pytest.raises(DashboardRefused) as caught:
        detect_at(running)
    assert str(caught.value) == TOO_OLD_MESSAGE


def test_a_dashboard_reached_around_its_proxy_gets_its_own_message() -> None:
    fake = FakeV1(profile="v2.1+", real_ip_header="X-Real-IP")
    with serve_v1(fake) as running, pytest.raises(DashboardRefused) as caught:
        detect_at(running)
    assert str(caught.value) == REAL_IP_MESSAGE


V0_404 = Reply(404, b"<!DOCTYPE html><html>404 page not found</html>")
JSON_404 = Reply(404, b'{"error":"404 Not Found"}')


@pytest.mark.parametrize(("setting", "tokens", "request_named"), [
    (Reply(200, b"<html>portal</html>"), JSON_404, "GET /api/v1/setting"),
    (Reply(200, b'{"success":false}'), JSON_404, "GET /api/v1/setting"),
    (Reply(403, b'{"success":true,"data":{}}'), JSON_404, "GET /api/v1/setting"),
    (Reply(200, b'{"success":true,"data":{"config":{},"tsdb_enabled":true}}'), Reply(401, b"no"),
     "GET /api/v1/api-tokens"),
])
def test_answers_no_dashboard_gives_are_refused_naming_the_request(setting: Reply, tokens: Reply,
                                                                   request_named: str) -> None:
    with pytest.raises(DashboardRefused) as caught:
        classify({"setting": setting, "register": JSON_404, "api-tokens": tokens})
    assert f"generation detection: {request_named} answered HTTP" in str(caught.value)


def test_a_v0_register_answer_that_is_neither_403_nor_missing_is_refused() -> None:
    with pytest.raises(DashboardRefused, match="POST /api/v1/server/register answered HTTP 200"):
        classify({"setting": V0_404, "register": Reply(200, b'"secret"'), "api-tokens": V0_404})


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_overload_and_server_errors_are_transient(status: int) -> None:
    def send(probe: Probe, seconds_left: float) -> Reply:
        return Reply(status, b"busy")

    with pytest.raises(Transient):
        detect(send, 1.0)


def test_a_redirect_is_refused_not_followed() -> None:
    def send(probe: Probe, seconds_left: float) -> Reply:
        return Reply(302, b"")

    with pytest.raises(DashboardRefused, match="redirect"):
        detect(send, 1.0)


@pytest.fixture
def v21() -> Iterator[Running]:
    with serve_v1(FakeV1(profile="v2.1+")) as running:
        yield running


def test_v2_1_is_the_only_generation_with_access_tokens(v21: Running) -> None:
    assert [g for g in Generation if g.has_access_tokens] == [Generation.V2_1]
    assert detect_at(v21).has_access_tokens
