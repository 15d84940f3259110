"""The node's own system failing under an install (a full disk, a read-only /opt, a file where a directory
should be): exit 5 naming the path and the system's reason, and the next run finishes without a second
server. Also: every HTTP client a run or a check makes is closed, whatever the outcome."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nezha_bootstrap import http
from nezha_bootstrap.agent import AGENT_V1
from nezha_bootstrap.effects import Command
from nezha_bootstrap.errors import InstallerFailed
from nezha_bootstrap.identity import machine_uuid
from nezha_bootstrap.report import Reporter
from nezha_bootstrap.testing.fake_v1 import FakeV1, serve_v1
from tests.conftest import MACHINE_ID, TOKEN, Cli, CliSession, V1Cli
from tests.processes import run
from tests.test_faults_process import FULL, error_line, mount_namespace  # noqa: F401 - a fixture
from tests.test_run_v0_direct import direct, releases  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration

UUID = machine_uuid(MACHINE_ID)
AGENT_DIR = "opt/nezha/agent"
INSTALLER = "var/lib/nezha-bootstrap/installer/install.sh"


@pytest.fixture
def v1cli(root: Path) -> Iterator[V1Cli]:
    """conftest's v1cli, built here: pytest loads conftest.py as `conftest`, apart from the `tests.conftest`
    this module imports, so only a V1Cli made from this module's import passes its isinstance checks."""
    fake = FakeV1(profile="v2.1+")
    fake.add_release(AGENT_V1)
    with serve_v1(fake) as running:
        yield V1Cli(running, fake, root)


@pytest.fixture
def session(request: pytest.FixtureRequest) -> CliSession:
    """The same run through one install path (indirect parameter): install.sh ("v0 script"), the v0 agent's
    own install ("v0 direct"), the v1/v2 agent's ("v1")."""
    fixture = {"v0 script": "cli", "v0 direct": "direct", "v1": "v1cli"}[request.param]
    return request.getfixturevalue(fixture)  # type: ignore[no-any-return]


def each_kind(rows: list[tuple[Any, ...]]) -> list[Any]:
    """Rows of (id, kinds, values...) as one parameter set per kind: (kind, values...)."""
    return [pytest.param(kind, *values, id=f"{kind}: {name}") for name, kinds, *values in rows for kind in kinds]


def servers(session: CliSession) -> list[str]:
    """What the dashboard holds for this node: v0 node secrets, or v1/v2 uuids."""
    if isinstance(session, V1Cli):
        return [server.uuid for server in session.fake.servers]
    return [server.secret for server in v0(session).fake.servers]


def v0(session: CliSession) -> Cli:
    """The v0 session (conftest's Cli: pytest loads conftest under another module name than tests.conftest)."""
    assert not isinstance(session, V1Cli)
    return session  # type: ignore[return-value]


def assert_rerun_finishes_with_one_server(session: CliSession, before: list[str]) -> None:
    again = session.invoke(["run", "-v"])

    assert again.exit_code == 0, again.stderr
    if isinstance(session, V1Cli):
        assert servers(session) == [UUID] and session.state()["uuid"] == UUID
    else:
        assert "plan: install only (registered earlier, the install did not finish)" in again.stderr
        assert servers(session) == before and len(before) == 1
    assert (session.root / AGENT_DIR / "nezha-agent").is_file()


# --- a file where a directory should be, a directory where a file should be ---------------------------------

# id, the install paths that write there, what blocks (a file or a directory, under the root), the error
BLOCKERS = each_kind([
    ("opt/nezha is a file", ("v0 script", "v0 direct", "v1"), "opt/nezha", "file",
     "cannot create the directory {root}/opt/nezha/agent: Not a directory"),
    ("the binary is a directory", ("v0 direct", "v1"), f"{AGENT_DIR}/nezha-agent", "dir",
     "cannot write {root}/opt/nezha/agent/nezha-agent: Is a directory"),
    ("config.yml is a directory", ("v1",), f"{AGENT_DIR}/config.yml", "dir",
     "cannot write {root}/opt/nezha/agent/config.yml: Is a directory"),
    ("install.sh is a directory", ("v0 script",), INSTALLER, "dir",
     "cannot write {root}/" + INSTALLER + ": Is a directory"),
])


@pytest.mark.parametrize(("session", "blocker", "what", "error"), BLOCKERS, indirect=["session"])
def test_a_local_write_that_fails_exits_5_naming_the_path_and_a_rerun_finishes_without_a_second_server(
        session: CliSession, blocker: str, what: str, error: str) -> None:
    path = session.root / blocker
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("in the way\n") if what == "file" else path.mkdir()

    failed = session.invoke(["run", "-v"])

    assert failed.exit_code == 5, failed.stderr
    assert error_line(failed.stderr) == "error: " + error.format(root=session.root)
    assert "Traceback" not in failed.stderr and "internal error" not in failed.stderr
    before = servers(session)
    if not isinstance(session, V1Cli):
        [server] = v0(session).fake.servers
        saved = json.loads((session.root / "var/lib/nezha-bootstrap/state.json").read_text())
        assert (saved["secret"], saved["installed_at"]) == (server.secret, None)  # kept for the rerun

    path.unlink() if what == "file" else shutil.rmtree(path)
    assert_rerun_finishes_with_one_server(session, before)


@pytest.mark.root
@pytest.mark.usefixtures("mount_namespace")
# Not install.sh: it writes the agent directory itself, and its failure is test_faults_installer's exit 1 row.
@pytest.mark.parametrize("session", ["v0 direct", "v1"], indirect=True)
def test_a_full_disk_under_the_agent_directory_exits_5_and_a_rerun_finishes(session: CliSession) -> None:
    opt = session.root / "opt/nezha"
    opt.mkdir(parents=True)

    failed = run(session, "run", "-v", prefix=("unshare", "-m", "sh", "-c", FULL, str(opt)))  # type: ignore[arg-type]

    assert failed.exit_code == 5, failed.stderr
    assert error_line(failed.stderr) == f"error: cannot write {opt}/agent/nezha-agent: No space left on device"
    assert_rerun_finishes_with_one_server(session, servers(session))


def test_a_command_record_that_cannot_be_removed_fails_the_command_without_starting_it(tmp_path: Path) -> None:
    track = tmp_path / "child"
    track.mkdir()  # unlink() of it fails (EISDIR), as on a read-only state directory
    command = Command(("nezha-agent", "service", "install"), track=track, error=InstallerFailed, name="install")

    with pytest.raises(InstallerFailed) as raised:
        command.apply(Reporter(verbosity=-1))

    assert str(raised.value) == (f"cannot look for a command an earlier run left running ({track}: Is a directory); "
                                 "install was not started")
    quiet = Reporter(verbosity=-1)
    Command(command.argv, track=track, must_succeed=False, name="the uninstall").apply(quiet)
    assert quiet.warnings == [f"cannot look for a command an earlier run left running ({track}: Is a directory); "
                              "the uninstall was not started; going on (run with -v to see its output)"]


# --- the naming note ----------------------------------------------------------------------------------------

def test_an_api_token_that_is_no_access_token_still_gets_the_naming_note_on_v2_1(v1cli: V1Cli) -> None:
    outcome = v1cli("--json", NEZHA_TOKEN=TOKEN)

    assert outcome.exit_code == 0, outcome.stderr
    summary = json.loads(outcome.stdout)
    assert (summary["generation"], summary["outcome"]) == ("v2.1+", "installed")
    assert "two random words" in summary["naming"]


# --- HTTP clients are closed --------------------------------------------------------------------------------

@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> list[httpx.Client]:
    """Every client http.make_client and http.make_download_client return, in order."""
    clients: list[httpx.Client] = []
    for name in ("make_client", "make_download_client"):
        real = getattr(http, name)

        def recording(*args: object, _real: object = real, **kwargs: object) -> httpx.Client:
            client = _real(*args, **kwargs)  # type: ignore[operator]
            clients.append(client)
            return client  # type: ignore[no-any-return]

        monkeypatch.setattr(http, name, recording)
    return clients


ALL = ("v0 script", "v0 direct", "v1")
# id, install paths, the command, extra settings, what blocks the install (a file, under the root), the exit code
RUNS = each_kind([
    ("run", ALL, "run", {}, None, 0),
    ("a failing install", ALL, "run", {}, "opt/nezha", 5),
    ("a refused token", ("v0 script", "v0 direct"), "run", {"NEZHA_TOKEN": "W" * 32}, None, 3),
    ("token mode", ("v1",), "run", {"NEZHA_TOKEN": "access", "NODE_NAME": "web-1"}, None, 0),
    # The v0 check also connects to the probe address, where nothing listens: its FAIL is exit 4.
    ("check", ("v0 script", "v0 direct"), "check", {"NEZHA_PROBE_ADDRESS": "127.0.0.1"}, None, 4),
    ("check", ("v1",), "check", {}, None, 0),
])


@pytest.mark.parametrize(("session", "command", "env", "blocker", "code"), RUNS, indirect=["session"])
def test_every_client_a_run_or_check_makes_is_closed(
        session: CliSession, made: list[httpx.Client], command: str, env: dict[str, str], blocker: str | None,
        code: int) -> None:
    if env.get("NEZHA_TOKEN") == "access":
        assert isinstance(session, V1Cli)
        env = {**env, "NEZHA_TOKEN": session.fake.add_token()}
    if blocker:
        (session.root / blocker).parent.mkdir(parents=True, exist_ok=True)
        (session.root / blocker).write_text("in the way\n")

    outcome = session.invoke([command], **env)

    assert outcome.exit_code == code, outcome.stdout + outcome.stderr
    assert made, "the run made no client: the test proves nothing"
    assert [client.is_closed for client in made] == [True] * len(made)

