"""`nezha-bootstrap run` end to end against the fake v0 dashboard and the stub installer."""

from __future__ import annotations

import json
import stat

import pytest

from tests.conftest import MACHINE_ID, TOKEN, Cli, leak_scan

pytestmark = pytest.mark.integration


def test_first_run_registers_once_and_installs(cli: Cli) -> None:
    outcome = cli("run", NODE_NAME="web-1")

    assert outcome.exit_code == 0, outcome.stderr
    [register] = cli.fake.registrations()
    assert register.path == "/api/v1/server/register"
    assert register.query == "simple=true"
    assert register.headers["authorization"] == TOKEN
    assert json.loads(register.body) == {"Name": "web-1", "HideForGuest": "on"}
    [server] = cli.fake.servers
    [call] = cli.calls()
    assert call.argv == ["install_agent", "probe.example.test", "5555", server.secret, "--tls"]
    assert call.cwd == str(cli.root / "opt/nezha/agent")
    assert call.stdin == "/dev/null"
    assert "CN" not in call.env and "NEZHA_TOKEN" not in call.env
    state_file = cli.root / "var/lib/nezha-bootstrap/state.json"
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(state_file.parent.stat().st_mode) == 0o700
    state = json.loads(state_file.read_text())
    assert state["secret"] == server.secret and state["machine_id"] == MACHINE_ID
    assert state["installed_at"] and state["registered_at"]
    assert leak_scan(cli) == []


def test_second_run_makes_no_request(cli: Cli) -> None:
    assert cli("run").exit_code == 0
    seen = len(cli.fake.journal)

    outcome = cli("run")

    assert outcome.exit_code == 0
    assert len(cli.fake.journal) == seen
    assert "nothing to do" in outcome.stderr
    assert len(cli.calls()) == 1
