"""`nezha-bootstrap status`: the saved state without the secret, the agent unit, the agent process."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MACHINE_ID, Cli
from tests.test_run import STATE, UNIT, snapshot


def status_json(cli: Cli) -> dict[str, object]:
    outcome = cli("status", "--json")
    assert outcome.exit_code == 0, outcome.stderr
    return json.loads(outcome.stdout)  # type: ignore[no-any-return]


def test_status_without_state_says_not_registered(cli: Cli) -> None:
    outcome = cli("status")

    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.stdout.splitlines() == [
        f"state_file: {cli.root / STATE}",
        "registered: no",
        "installed: no",
        "agent_unit: -",
        "agent_running: no",
        "agent_pids: -",
    ]
    assert not (cli.root / "var").exists()


@pytest.mark.integration
def test_status_after_a_v0_run_says_v0_in_words(cli: Cli) -> None:
    assert cli("run").exit_code == 0

    lines = cli("status").stdout.splitlines()

    assert "generation: v0" in lines and "registered: yes" in lines and "installed: yes" in lines
    assert not any(value in line for line in lines for value in (": None", ": True", ": False"))


def test_status_json_without_state(cli: Cli) -> None:
    assert status_json(cli) == {
        "state_file": str(cli.root / STATE), "registered": False, "installed": False, "agent_unit": None,
        "agent_running": False, "agent_pids": [], "exit_code": 0,
    }


@pytest.mark.integration
def test_status_after_a_run_shows_the_state_but_never_the_secret(cli: Cli) -> None:
    assert cli("run", NODE_NAME="web-1", NEZHA_TAG="edge").exit_code == 0
    [server] = cli.fake.servers

    report = status_json(cli)
    text = cli("status").stdout

    assert all(isinstance(report[key], str) for key in ("registered_at", "installed_at"))
    expected = {
        "state_file": str(cli.root / STATE), "registered": True, "installed": True,
        "dashboard_url": cli.dashboard.url, "name": "web-1", "tag": "edge", "probe_address": "probe.example.test",
        "probe_port": 5555, "tls": True, "machine_id": MACHINE_ID, "agent_unit": str(cli.root / UNIT),
        "agent_running": False, "agent_pids": [], "exit_code": 0,
    }
    assert {key: report.get(key) for key in expected} == expected
    assert "name: web-1" in text.splitlines()
    assert server.secret not in text + json.dumps(report)
    assert "secret" not in text


@pytest.mark.integration
def test_status_after_an_installer_failure_shows_registered_not_installed(cli: Cli) -> None:
    assert cli("run", NEZHA_STUB_MODE="nounit").exit_code == 5

    report = status_json(cli)

    assert (report["registered"], report["installed"], report["agent_unit"]) == (True, False, None)


def test_status_with_a_corrupt_state_file_exits_1_and_changes_nothing(cli: Cli) -> None:
    state_file = cli.root / STATE
    state_file.parent.mkdir(parents=True, mode=0o700)
    state_file.write_text("[]")
    before = snapshot(cli.root)

    outcome = cli("status")

    assert outcome.exit_code == 1
    assert "it was left as it is" in outcome.stderr
    assert snapshot(cli.root) == before


def start_agent(binary: Path) -> subprocess.Popen[bytes]:
    """A process called nezha-agent (a copy of sleep) at `binary`."""
    sleep = shutil.which("sleep")
    assert sleep is not None
    binary.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(sleep, binary)
    return subprocess.Popen([str(binary), "60"], stdin=subprocess.DEVNULL)


@pytest.fixture
def agents(cli: Cli, tmp_path: Path) -> Iterator[tuple[int, int]]:
    """Two agents: one run from the root's /opt/nezha/agent, one from elsewhere (the host's, as far as the
    root is concerned); stopped by their pids afterwards."""
    procs = [start_agent(cli.root / "opt/nezha/agent/nezha-agent"), start_agent(tmp_path / "host/nezha-agent")]
    try:
        yield procs[0].pid, procs[1].pid
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


@pytest.mark.integration
def test_status_under_a_root_sees_the_agent_of_that_root_only(cli: Cli, agents: tuple[int, int]) -> None:
    inside, outside = agents

    report = status_json(cli)

    assert report["agent_running"] is True
    assert inside in report["agent_pids"]  # type: ignore[operator]
    assert outside not in report["agent_pids"]  # type: ignore[operator]


@pytest.mark.integration
def test_status_of_an_empty_root_counts_no_agent_whatever_the_host_runs(cli: Cli, tmp_path: Path) -> None:
    """Issue 18 item 14: `agent_running: yes` for an empty root while the host ran an agent."""
    proc = start_agent(tmp_path / "host/nezha-agent")
    try:
        report = status_json(cli)
    finally:
        proc.kill()
        proc.wait()

    assert (report["agent_running"], report["agent_pids"]) == (False, [])
