"""`nezha-bootstrap demo`: the real flow against the built-in fake dashboard and stub installer, twice."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from nezha_bootstrap import demo
from nezha_bootstrap.testing.fake_v0 import FakeDashboard
from tests.conftest import Cli

pytestmark = pytest.mark.integration


@pytest.fixture
def demo_fakes(monkeypatch: pytest.MonkeyPatch) -> list[FakeDashboard]:
    """The fake dashboards the demo starts, kept for the assertions (their token and secrets)."""
    made: list[FakeDashboard] = []

    class Recorded(FakeDashboard):
        def __init__(self, token: str) -> None:
            super().__init__(token)
            made.append(self)

    monkeypatch.setattr(demo, "FakeDashboard", Recorded)
    return made


def secrets_of(fake: FakeDashboard) -> list[str]:
    return [*fake.tokens, *(server.secret for server in fake.servers)]


def test_demo_registers_installs_and_shows_the_second_run_does_nothing(
    cli: Cli, demo_fakes: list[FakeDashboard]
) -> None:
    outcome = cli("demo")

    assert outcome.exit_code == 0, outcome.stderr
    [fake] = demo_fakes
    [server] = fake.servers
    lines = outcome.stdout.splitlines()
    assert re.fullmatch(
        r"dashboard received: POST /api/v1/server/register\?simple=true "
        r'body=\{"Name": "demo-.+", "Tag": "demo", "HideForGuest": "on"\} \(Authorization: <token>\)',
        next(line for line in lines if "POST" in line),
    )
    assert "installer called: sh install.sh install_agent 127.0.0.1 5555 *** --tls" in lines
    assert "  cwd " in outcome.stdout and "stdin /dev/null, CN (unset)" in outcome.stdout
    assert '  ExecStart=/opt/nezha/agent/nezha-agent "-s" "127.0.0.1:5555" "-p" "***" "--tls"' in lines
    assert lines[-1] == "outcome: nothing_to_do; requests made: 0"
    assert len(fake.registrations()) == 1 and server.name.startswith("demo-")
    assert [s for s in secrets_of(fake) if s in outcome.stdout + outcome.stderr] == []


def test_demo_removes_its_temporary_root(cli: Cli, demo_fakes: list[FakeDashboard]) -> None:
    outcome = cli("demo")

    root = Path(re.search(r"temporary root (\S+)", outcome.stdout).group(1))  # type: ignore[union-attr]
    assert root.name.startswith("nezha-bootstrap-demo-")
    assert not root.exists()


def test_demo_ignores_stub_settings_in_the_callers_environment(cli: Cli, demo_fakes: list[FakeDashboard]) -> None:
    outcome = cli("demo", NEZHA_STUB_MODE="exit1", NEZHA_STUB_RECORD=str(cli.record_dir), CN="1")

    assert outcome.exit_code == 0, outcome.stderr
    assert "installer called: sh install.sh install_agent 127.0.0.1 5555 *** --tls" in outcome.stdout
    assert "CN (unset)" in outcome.stdout
    assert cli.calls() == []


def test_demo_reaches_its_fake_directly_even_behind_a_proxy(cli: Cli, demo_fakes: list[FakeDashboard]) -> None:
    outcome = cli("demo", HTTP_PROXY="http://127.0.0.1:9", NO_PROXY=None, no_proxy=None)

    assert outcome.exit_code == 0, outcome.stderr


def test_demo_json_is_one_object(cli: Cli, demo_fakes: list[FakeDashboard]) -> None:
    outcome = cli("demo", "--json")

    assert outcome.exit_code == 0, outcome.stderr
    assert json.loads(outcome.stdout) == {
        "first": "registered_and_installed", "second": "nothing_to_do", "registrations": 1,
        "second_run_requests": 0, "exit_code": 0,
    }
