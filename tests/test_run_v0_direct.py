"""`run --method direct` against a v0 dashboard: register as always, then the pinned v0 agent installs itself.

The release host is a fake serving a zip whose `nezha-agent` is nezha_bootstrap/testing/stubs/stub-agent-v0.sh: its
`service install -s HOST:PORT -p SECRET [--tls] [flags]` writes the unit the real agent writes.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator

import pytest

from nezha_bootstrap.agent import AGENT_V0
from nezha_bootstrap.testing.fake_v0 import Running
from nezha_bootstrap.testing.fake_v1 import FakeV1, serve_v1
from nezha_bootstrap.testing.stubrecord import StubCall, read_calls
from tests.conftest import TOKEN, Cli, leak_scan
from tests.test_run import snapshot

pytestmark = pytest.mark.integration

ASSET = "nezha-agent_linux_amd64.zip"
STATE = "var/lib/nezha-bootstrap/state.json"
UNIT = "etc/systemd/system/nezha-agent.service"


@pytest.fixture
def releases() -> Iterator[Running]:
    """The release host: v0.20.5 zips of the stub v0 agent with their checksums.txt."""
    host = FakeV1()
    host.add_release(AGENT_V0)
    with serve_v1(host) as running:
        yield running


@pytest.fixture
def direct(cli: Cli, releases: Running) -> Cli:
    """`cli` with --method direct and the fake release host as NEZHA_AGENT_BASE_URL."""
    base_env = cli.env

    def env(**overrides: str | None) -> dict[str, str | None]:
        return base_env(**{"NEZHA_INSTALL_METHOD": "direct", "NEZHA_AGENT_BASE_URL": f"{releases.url}/releases",
                           **overrides})

    cli.env = env  # type: ignore[method-assign]  # the same runs, with two more settings
    return cli


def agent_calls(cli: Cli) -> list[StubCall]:
    return read_calls(cli.record_dir / "agent")


def release_requests(releases: Running) -> list[str]:
    return [j.path for j in releases.fake.journal]


def saved(cli: Cli) -> dict[str, object]:
    return dict(json.loads((cli.root / STATE).read_text()))


def test_direct_registers_once_and_the_agent_installs_itself_without_install_sh(
        direct: Cli, releases: Running) -> None:
    outcome = direct("run", "--json", NODE_NAME="web-1")

    assert outcome.exit_code == 0, outcome.stderr
    [server] = direct.fake.servers
    assert release_requests(releases) == [f"/releases/v{AGENT_V0}/checksums.txt", f"/releases/v{AGENT_V0}/{ASSET}"]
    assert "/install.sh" not in [j.path for j in direct.fake.journal] and direct.calls() == []
    [call] = agent_calls(direct)
    agent_dir = direct.root / "opt/nezha/agent"
    assert (call.argv, call.cwd, call.stdin) == (
        ["service", "install", "-s", "probe.example.test:5555", "-p", server.secret, "--tls"], str(agent_dir),
        "/dev/null")
    assert "NEZHA_TOKEN" not in call.env and not any(key.startswith("NZ_") for key in call.env)
    assert stat.S_IMODE((agent_dir / "nezha-agent").stat().st_mode) == 0o755
    unit = (direct.root / UNIT).read_text()
    exec_start = f'/opt/nezha/agent/nezha-agent "-s" "probe.example.test:5555" "-p" "{server.secret}" "--tls"'
    assert f"ExecStart={exec_start}" in unit.splitlines()
    assert "WorkingDirectory=/opt/nezha/agent" in unit.splitlines()
    state = saved(direct)
    assert (state["secret"], state["method"], state["installed_at"] is not None) == (server.secret, "direct", True)
    summary = json.loads(outcome.stdout)
    assert (summary["outcome"], summary["generation"], summary["method"]) == (
        "registered_and_installed", "v0", "direct")
    assert [(s["step"], s["ok"]) for s in summary["steps"]] == [
        ("detect", True), ("register", True), ("download", True), ("install", True), ("verify", True),
        ("online", True)]
    assert leak_scan(direct) == []


def test_a_rerun_sends_and_runs_nothing(direct: Cli, releases: Running) -> None:
    assert direct("run").exit_code == 0
    seen = (len(direct.fake.journal), len(releases.fake.journal), len(agent_calls(direct)))

    outcome = direct("run")

    assert outcome.exit_code == 0, outcome.stderr
    assert "plan: nothing to do (registered and installed)" in outcome.stderr
    assert (len(direct.fake.journal), len(releases.fake.journal), len(agent_calls(direct))) == seen


def test_a_reinstall_over_an_installed_agent_uninstalls_it_first(direct: Cli) -> None:
    assert direct("run").exit_code == 0

    outcome = direct("run", "--agent-flag", "--disable-auto-update", NEZHA_PROBE_PORT="5556")

    assert outcome.exit_code == 0, outcome.stderr
    assert ("plan: install only (the probe address, port or TLS setting changed; "
            "the agent flags changed (none -> --disable-auto-update))") in outcome.stderr
    [server] = direct.fake.servers
    assert [c.argv for c in agent_calls(direct)][1:] == [
        ["service", "uninstall"],
        ["service", "install", "-s", "probe.example.test:5556", "-p", server.secret, "--tls", "--disable-auto-update"],
    ]
    assert '"-s" "probe.example.test:5556"' in (direct.root / UNIT).read_text()


def test_no_tls_leaves_tls_out(direct: Cli) -> None:
    assert direct("run", "--no-tls").exit_code == 0
    assert agent_calls(direct)[0].argv[-1] != "--tls"
    assert '"--tls"' not in (direct.root / UNIT).read_text()


@pytest.mark.parametrize(("tamper", "message"), [
    ("zip", "checksums.txt says"),
    ("version", "checksums.txt: HTTP 404: no such agent version or asset"),
    ("pin", "--agent-sha256 pins"),
])
def test_a_bad_release_is_refused_after_registering_and_the_next_run_only_installs(
        direct: Cli, releases: Running, tamper: str, message: str) -> None:
    zip_path = f"/releases/v{AGENT_V0}/{ASSET}"
    good = releases.fake.files[zip_path]
    extra = {"zip": {}, "version": {"NEZHA_AGENT_VERSION": "0.20.99"}, "pin": {"NEZHA_AGENT_SHA256": "0" * 64}}[tamper]
    if tamper == "zip":
        releases.fake.files[zip_path] = good + b"tampered"

    outcome = direct("run", **extra)

    assert outcome.exit_code == 5
    assert message in outcome.stderr
    assert not (direct.root / "opt/nezha/agent/nezha-agent").exists() and agent_calls(direct) == []
    assert saved(direct)["installed_at"] is None  # the server's secret is kept: no second server later
    releases.fake.files[zip_path] = good
    again = direct("run")
    assert again.exit_code == 0, again.stderr
    assert "plan: install only (registered earlier, the install did not finish)" in again.stderr
    assert len(direct.fake.servers) == 1


def test_a_unit_left_by_another_install_is_uninstalled_first(direct: Cli) -> None:
    unit = direct.root / UNIT
    unit.parent.mkdir(parents=True)
    unit.write_text("[Service]\n")  # `service install` refuses an existing unit ("Init already exists")

    outcome = direct("run")

    assert outcome.exit_code == 0, outcome.stderr
    assert [c.argv[:2] for c in agent_calls(direct)] == [["service", "uninstall"], ["service", "install"]]


@pytest.mark.parametrize(("mode", "message"), [
    ("exit1", "error: `nezha-agent service install` exited with status 1; run again with -v to see its output"),
    ("nounit", "error: the installer exited, but wrote no agent unit"),
])
def test_a_failed_or_lying_service_install_exits_5_and_the_next_run_only_installs(
        direct: Cli, mode: str, message: str) -> None:
    outcome = direct("run", NEZHA_STUB_MODE=mode)

    assert outcome.exit_code == 5
    assert outcome.stderr.splitlines()[-1].startswith(message)
    assert saved(direct)["installed_at"] is None
    again = direct("run")
    assert again.exit_code == 0, again.stderr
    assert "plan: install only (registered earlier, the install did not finish)" in again.stderr
    assert len(direct.fake.servers) == 1
    assert leak_scan(direct) == []


def test_dry_run_prints_the_direct_plan_and_touches_nothing(direct: Cli, releases: Running) -> None:
    before = snapshot(direct.root)

    outcome = direct("run", "--dry-run", "--dashboard", "v0", NODE_NAME="web-1")

    assert outcome.exit_code == 0, outcome.stderr
    agent = direct.root / "opt/nezha/agent/nezha-agent"
    lines = outcome.stdout.splitlines()
    for expected in (
        f"POST {direct.dashboard.url}/api/v1/server/register?simple=true",
        f"download {releases.url}/releases/v{AGENT_V0}/checksums.txt (at most 65536 bytes)",
        f"download {releases.url}/releases/v{AGENT_V0}/{ASSET} (at most 67108864 bytes, redirects followed)",
        f"run: {agent} service install -s probe.example.test:5555 -p '<secret>' --tls",
        f"  cwd {direct.root / 'opt/nezha/agent'}, stdin /dev/null, environment without NZ_* and NEZHA_TOKEN",
    ):
        assert expected in lines, expected
    assert not any("install.sh" in line for line in lines)
    assert (direct.fake.journal, releases.fake.journal, snapshot(direct.root)) == ([], [], before)
    assert TOKEN not in outcome.stdout + outcome.stderr
