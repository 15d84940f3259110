"""`nezha-bootstrap check` with v1/v2 settings: generation, agent secret, uuid, gRPC port, release; nothing changed."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from nezha_bootstrap.agent import AGENT_V0, AGENT_V1
from nezha_bootstrap.identity import machine_uuid
from nezha_bootstrap.testing.fake_v0 import Running
from nezha_bootstrap.testing.fake_v1 import FakeV1, serve_v1
from nezha_bootstrap.testing.grpc_port import AgentPort
from nezha_bootstrap.v1.api import SCOPE_PROBE
from tests.conftest import MACHINE_ID, Cli, V1Cli
from tests.test_run import snapshot

ASSET = "nezha-agent_linux_amd64.zip"


def check(v1cli: V1Cli, *args: str, **env: str | None) -> tuple[int, list[str], str]:
    from nezha_bootstrap.cli import main
    from tests.conftest import make_runner

    result = make_runner().invoke(main, ["check", *args], env=v1cli.env(**env), catch_exceptions=False)
    return result.exit_code, result.stdout.splitlines(), result.stderr


def statuses(lines: list[str]) -> list[tuple[str, str]]:
    return [(line.split()[1], line.split()[0]) for line in lines]


def test_every_v1_check_passes_and_nothing_is_enrolled_or_written(v1cli: V1Cli) -> None:
    before = snapshot(v1cli.root)

    code, lines, stderr = check(v1cli)

    assert code == 0, stderr
    port = v1cli.running.port
    assert lines == [
        "ok    generation v2.1+ (three requests without credentials)",
        "ok    secret     given; not tried here (a wrong one counts towards the dashboard's WAF, only the agent's "
        "enrollment shows it)",
        f"ok    identity   uuid {machine_uuid(MACHINE_ID)} (from machine-id)",
        f"ok    probe      127.0.0.1:{port} answers the HTTP/2 preface, as gRPC needs (without TLS)",
        f"ok    release    v{AGENT_V1} {ASSET} downloads; its SHA-256 matches checksums.txt",
    ]
    assert [(j.method, j.path) for j in v1cli.fake.journal] == [
        ("GET", "/api/v1/setting"), ("POST", "/api/v1/server/register"), ("GET", "/api/v1/api-tokens"),
        ("GET", f"/releases/v{AGENT_V1}/checksums.txt"), ("GET", f"/releases/v{AGENT_V1}/{ASSET}")]
    assert (v1cli.fake.servers, v1cli.fake.connections, snapshot(v1cli.root)) == ([], [], before)
    assert not any(v1cli.fake.agent_secret.encode() in j.body for j in v1cli.fake.journal)


@pytest.mark.parametrize(("prepare", "args", "env", "expected", "code"), [
    ("", ("--dashboard", "v1"), {"NEZHA_AGENT_SECRET": None},
     [("generation", "skip"), ("secret", "FAIL"), ("identity", "ok"), ("probe", "ok"), ("release", "ok")], 2),
    ("uninitialized", (), {},
     [("generation", "ok"), ("secret", "ok"), ("identity", "FAIL"), ("probe", "ok"), ("release", "ok")], 2),
    ("", (), {"NEZHA_PROBE_PORT": "{closed}"},
     [("generation", "ok"), ("secret", "ok"), ("identity", "ok"), ("probe", "FAIL"), ("release", "ok")], 4),
    ("", ("--agent-version", "9.9.9"), {},
     [("generation", "ok"), ("secret", "ok"), ("identity", "ok"), ("probe", "ok"), ("release", "FAIL")], 5),
    ("tamper", (), {},
     [("generation", "ok"), ("secret", "ok"), ("identity", "ok"), ("probe", "ok"), ("release", "FAIL")], 5),
    ("", (), {"NEZHA_DASHBOARD_URL": "http://127.0.0.1:{closed}"}, [("generation", "FAIL")], 4),
])
def test_each_v1_failure_is_a_fail_line_and_the_first_sets_the_exit_code(
        v1cli: V1Cli, prepare: str, args: tuple[str, ...], env: dict[str, str | None],
        expected: list[tuple[str, str]], code: int, closed_port: int) -> None:
    port = closed_port
    env = {key: value.format(closed=port) if value else value for key, value in env.items()}
    if prepare == "uninitialized":
        (v1cli.root / "etc/machine-id").write_text("uninitialized\n")
    if prepare == "tamper":
        v1cli.fake.files[f"/releases/v{AGENT_V1}/{ASSET}"] += b"tampered"

    exit_code, lines, stderr = check(v1cli, *args, **env)

    assert exit_code == code, stderr
    assert statuses(lines) == expected
    assert v1cli.fake.servers == []


def test_the_fail_lines_say_what_to_do(v1cli: V1Cli) -> None:
    (v1cli.root / "etc/machine-id").write_text("")
    v1cli.fake.files[f"/releases/v{AGENT_V1}/{ASSET}"] += b"tampered"

    _, lines, _ = check(v1cli)

    assert lines[2].startswith("FAIL  identity   /etc/machine-id is missing or empty")
    assert "systemd-machine-id-setup" in lines[2]
    assert lines[4].startswith(f"FAIL  release    {ASSET} has SHA-256 ")
    assert lines[4].endswith("refusing it (a broken download or mirror)")


def test_check_json_of_a_v1_dashboard(v1cli: V1Cli) -> None:
    code, lines, _ = check(v1cli, "--json")

    report = json.loads("\n".join(lines))
    assert (code, report["exit_code"]) == (0, 0)
    assert [(c["check"], c["status"]) for c in report["checks"]] == [
        ("generation", "ok"), ("secret", "ok"), ("identity", "ok"), ("probe", "ok"), ("release", "ok")]
    assert v1cli.fake.agent_secret not in "\n".join(lines)


@pytest.fixture
def releases() -> Iterator[Running]:
    host = FakeV1()
    host.add_release(AGENT_V0)
    with serve_v1(host) as running:
        yield running


def test_a_v0_dashboard_with_method_direct_checks_the_v0_release_instead_of_install_sh(
        cli: Cli, releases: Running) -> None:
    with AgentPort() as agent_port:
        port = agent_port.port
        outcome = cli("check", "--method", "direct", "--no-tls", NEZHA_AGENT_BASE_URL=f"{releases.url}/releases",
                      NEZHA_PROBE_ADDRESS="127.0.0.1", NEZHA_PROBE_PORT=str(port))

    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.stdout.splitlines() == [
        "ok    generation v0 (three requests without credentials)",
        f"ok    dashboard  {cli.dashboard.url} answers (plain http)",
        "ok    token      accepted; the dashboard is v0 with the token API",
        f"ok    probe      127.0.0.1:{port} answers the HTTP/2 preface, as gRPC needs (without TLS)",
        f"ok    release    v{AGENT_V0} {ASSET} downloads; its SHA-256 matches checksums.txt",
    ]
    assert "/install.sh" not in [j.path for j in cli.fake.journal]
    assert cli.fake.servers == []


def test_an_access_token_is_checked_with_one_read_and_one_refused_write(v1cli: V1Cli) -> None:
    token = v1cli.fake.add_token()

    code, lines, stderr = check(v1cli, NEZHA_TOKEN=token)

    assert code == 0, stderr
    assert ("ok    token      the access token lists servers and may change them (nezha:server:write, tried "
            "without a write)") in lines
    with_token = [(j.method, j.path) for j in v1cli.fake.journal if "authorization" in j.headers]
    assert with_token == [("GET", "/api/v1/server"), ("PATCH", SCOPE_PROBE)]
    assert v1cli.fake.changes == []
    assert token not in stderr + "\n".join(lines)


@pytest.mark.parametrize(("scopes", "missing"), [
    (("nezha:inventory:read",), "nezha:server:write"),
    (("nezha:server:write",), "nezha:inventory:read"),
    (("nezha:server:*",), "nezha:inventory:read"),
])
def test_a_token_without_a_scope_the_run_needs_fails_the_check_naming_it(
        v1cli: V1Cli, scopes: tuple[str, ...], missing: str) -> None:
    token = v1cli.fake.add_token(scopes=scopes)

    code, lines, stderr = check(v1cli, NEZHA_TOKEN=token)

    [line] = [line for line in lines if line.split()[1] == "token"]
    assert code == 3, stderr
    assert line.startswith("FAIL  token") and f"lacks scope {missing}" in line
    assert v1cli.fake.changes == [] and v1cli.fake.failed_credentials == 0


@pytest.mark.parametrize(("prepare", "args", "expected", "code"), [
    ("web", ("--group", "web"), "ok    group      'web' exists (id 1, 0 servers)", 0),
    ("", ("--group", "web"), "FAIL  group      group: there is no group called 'web'; create it in the dashboard, "
                             "or pass --create-group", 3),
    ("", ("--group", "web", "--create-group"), "ok    group      'web' does not exist yet; --create-group makes it",
     0),
    ("web", ("--group-id", "7"), "FAIL  group      group: there is no group with id 7 (or the token cannot see it)", 3),
    ("web web", ("--group", "web"), "FAIL  group      group: 2 groups are called 'web' (ids 1, 2); group names are "
                                    "not unique: give the id as well", 3),
])
def test_a_named_group_must_exist_unless_create_group_is_set(
        v1cli: V1Cli, prepare: str, args: tuple[str, ...], expected: str, code: int) -> None:
    for name in prepare.split():
        v1cli.fake.add_group(name)
    token = v1cli.fake.add_token()

    exit_code, lines, stderr = check(v1cli, *args, NEZHA_TOKEN=token)

    assert exit_code == code, stderr
    assert expected in lines
    assert len(v1cli.fake.groups) == len(prepare.split())


def test_the_group_is_checked_even_when_the_token_may_not_write(v1cli: V1Cli) -> None:
    token = v1cli.fake.add_token(scopes=("nezha:inventory:read",))

    code, lines, _ = check(v1cli, "--group", "web", NEZHA_TOKEN=token)

    assert code == 3
    assert [line.split()[:2] for line in lines if line.split()[1] in ("token", "group")] == [
        ["FAIL", "token"], ["FAIL", "group"]]


def test_a_bad_access_token_fails_the_check_once_with_the_waf_warning(v1cli: V1Cli) -> None:
    token = "nzp_" + "B" * 32

    code, lines, stderr = check(v1cli, "--group", "web", NEZHA_TOKEN=token)

    [line] = [line for line in lines if line.split()[1] == "token"]
    assert code == 3 and line.startswith("FAIL  token")
    assert "HTTP 401" in line and "WAF" in line
    assert [j.path for j in v1cli.fake.journal if "authorization" in j.headers] == ["/api/v1/server"]
    assert "skip  group      not checked: the token failed" in lines
    assert token not in stderr + "\n".join(lines)


def test_an_https_url_against_a_plain_http_port_says_the_port_speaks_plain_http(v1cli: V1Cli) -> None:
    port = v1cli.running.port

    code, lines, _ = check(v1cli, NEZHA_DASHBOARD_URL=f"https://127.0.0.1:{port}")

    assert code == 3
    assert lines == [f"FAIL  generation 127.0.0.1:{port} speaks plain HTTP, not TLS: the dashboard URL says https. "
                     "Use http:// in --dashboard-url, or the port that serves TLS"]


def test_check_fails_a_tls_setting_against_the_plain_grpc_port_before_anything_is_installed(v1cli: V1Cli) -> None:
    code, lines, _ = check(v1cli, "--tls")

    assert code == 3
    assert f"FAIL  probe      127.0.0.1:{v1cli.running.port} speaks gRPC without TLS, and the agent would connect " \
           "with TLS (--tls): it could never connect. Use --no-tls" in lines
    assert (v1cli.fake.servers, v1cli.fake.connections) == ([], [])
