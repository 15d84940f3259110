"""`nezha-bootstrap check`: one line per check, the exit code of the first failure, nothing changed."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from nezha_bootstrap.testing.grpc_port import AgentPort
from tests.conftest import Cli
from tests.test_run import snapshot


@pytest.fixture
def probe_port() -> Iterator[int]:
    """The v0 dashboard's agent port on 127.0.0.1: gRPC without TLS, as the real v0.20.13 serves it."""
    with AgentPort() as port:
        yield port.port


def run_check(cli: Cli, probe_port: int, *args: str, **env: str | None) -> tuple[int, list[str], str]:
    env = {"NEZHA_PROBE_ADDRESS": "127.0.0.1", "NEZHA_PROBE_PORT": str(probe_port), "NEZHA_PROBE_TLS": "false",
           **env}
    outcome = cli("check", *args, **env)
    return outcome.exit_code, outcome.stdout.splitlines(), outcome.stderr


def statuses(lines: list[str]) -> list[tuple[str, str]]:
    return [(line.split()[1], line.split()[0]) for line in lines]


def test_all_checks_pass_against_a_v0_dashboard_and_create_nothing(cli: Cli, probe_port: int) -> None:
    before = snapshot(cli.root)

    code, lines, stderr = run_check(cli, probe_port)

    assert code == 0, stderr
    assert lines == [
        f"ok    dashboard  {cli.dashboard.url} answers (plain http)",
        "ok    token      accepted; the dashboard is v0 with the token API",
        f"ok    probe      127.0.0.1:{probe_port} answers the HTTP/2 preface, as gRPC needs (without TLS)",
        f"ok    installer  {cli.dashboard.url}/install.sh downloads, hash matches",
    ]
    assert [(j.method, j.path) for j in cli.fake.journal] == [("GET", "/api/v1/server/list"), ("GET", "/install.sh")]
    assert cli.fake.servers == []
    assert snapshot(cli.root) == before


@pytest.mark.parametrize(
    ("env", "expected", "code"),
    [
        ({"NEZHA_TOKEN": "wrong-token"},
         [("dashboard", "ok"), ("token", "FAIL"), ("probe", "ok"), ("installer", "ok")], 3),
        ({"NEZHA_PROBE_PORT": "{closed}"},
         [("dashboard", "ok"), ("token", "ok"), ("probe", "FAIL"), ("installer", "ok")], 4),
        ({"NEZHA_INSTALL_SCRIPT_SHA256": "0" * 64},
         [("dashboard", "ok"), ("token", "ok"), ("probe", "ok"), ("installer", "FAIL")], 5),
        ({"NEZHA_INSTALL_SCRIPT_URL": "{url}/missing.sh"},
         [("dashboard", "ok"), ("token", "ok"), ("probe", "ok"), ("installer", "FAIL")], 5),
        ({"NEZHA_DASHBOARD_URL": "http://127.0.0.1:{closed}"},
         [("dashboard", "FAIL"), ("token", "skip"), ("probe", "ok"), ("installer", "ok")], 4),
        ({"NEZHA_TOKEN": "wrong-token", "NEZHA_PROBE_PORT": "{closed}"},
         [("dashboard", "ok"), ("token", "FAIL"), ("probe", "FAIL"), ("installer", "ok")], 3),
    ],
)
def test_each_failure_is_one_fail_line_and_the_first_sets_the_exit_code(
    cli: Cli, probe_port: int, env: dict[str, str], expected: list[tuple[str, str]], code: int, closed_port: int
) -> None:
    port = closed_port
    env = {key: value.format(closed=port, url=cli.dashboard.url) for key, value in env.items()}

    exit_code, lines, stderr = run_check(cli, probe_port, **env)

    assert exit_code == code, stderr
    assert statuses(lines) == expected
    assert cli.fake.servers == []


def test_a_v1_dashboard_fails_the_token_check_and_says_so(cli: Cli, probe_port: int) -> None:
    cli.fake.faults.v1 = "v1.5"

    code, lines, _ = run_check(cli, probe_port)

    assert code == 3
    assert lines[1].startswith("FAIL  token      server list: this dashboard is v1 or newer")


def test_the_probe_failure_names_the_address_and_port(cli: Cli, probe_port: int, closed_port: int) -> None:
    port = closed_port

    _, lines, _ = run_check(cli, probe_port, NEZHA_PROBE_PORT=str(port))

    assert lines[2] == f"FAIL  probe      127.0.0.1:{port} does not accept connections: Connection refused"


def test_check_json_is_one_object_with_every_check(cli: Cli, probe_port: int) -> None:
    outcome = cli("check", "--json", NEZHA_PROBE_ADDRESS="127.0.0.1", NEZHA_PROBE_PORT=str(probe_port),
                  NEZHA_PROBE_TLS="false", NEZHA_TOKEN="wrong-token")

    assert outcome.exit_code == 3
    report = json.loads(outcome.stdout)
    assert report["exit_code"] == 3
    assert [(c["check"], c["status"], c["exit_code"]) for c in report["checks"]] == [
        ("dashboard", "ok", 0), ("token", "FAIL", 3), ("probe", "ok", 0), ("installer", "ok", 0)]
    assert "refused the API token" in report["checks"][1]["detail"]


def test_check_with_invalid_settings_exits_2_before_any_request(cli: Cli) -> None:
    outcome = cli("check", NEZHA_PROBE_ADDRESS="bad address")

    assert outcome.exit_code == 2
    assert cli.fake.journal == []


def test_the_default_tls_against_the_plain_v0_grpc_port_fails_and_says_use_no_tls(cli: Cli, probe_port: int) -> None:
    code, lines, stderr = run_check(cli, probe_port, NEZHA_PROBE_TLS=None)

    assert code == 3, stderr
    assert lines[2] == (f"FAIL  probe      127.0.0.1:{probe_port} speaks gRPC without TLS, and the agent would "
                        "connect with TLS (--tls): it could never connect. Use --no-tls")
    assert cli.fake.servers == []


def test_the_v0_web_port_given_as_the_probe_port_fails_as_an_http1_port(cli: Cli, probe_port: int) -> None:
    code, lines, _ = run_check(cli, cli.dashboard.port)

    assert code == 3
    assert lines[2].startswith(f"FAIL  probe      127.0.0.1:{cli.dashboard.port} answers HTTP/1.x "
                               "('HTTP/1.1 404 Not Found') to the HTTP/2 preface (--no-tls)")
