"""`nezha-bootstrap run` end to end against the fake v0 dashboard and the stub installer."""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nezha_bootstrap.testing.fake_v0 import FakeDashboard, Running, serve
from tests.conftest import MACHINE_ID, TOKEN, Cli, leak_scan

pytestmark = pytest.mark.integration

STATE = "var/lib/nezha-bootstrap/state.json"
UNIT = "etc/systemd/system/nezha-agent.service"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00$")


def saved_state(cli: Cli) -> dict[str, object]:
    return json.loads((cli.root / STATE).read_text())  # type: ignore[no-any-return]


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every path under root with its mode and content: compared before and after a run."""
    return {
        str(path.relative_to(root)): (path.lstat().st_mode, path.read_bytes() if path.is_file() else b"")
        for path in sorted(root.rglob("*"))
    }


@pytest.fixture
def other_dashboard() -> Iterator[Running]:
    with serve(FakeDashboard(TOKEN)) as running:
        yield running


# --- the first run: the request, the installer call, the state ---------------------------------

def test_first_run_registers_once_and_installs(cli: Cli) -> None:
    outcome = cli("run", NODE_NAME="web-1")

    assert outcome.exit_code == 0, outcome.stderr
    [register] = cli.fake.registrations()
    assert register.path == "/api/v1/server/register"
    assert register.query == "simple=true"
    assert register.headers["authorization"] == TOKEN
    assert register.headers["user-agent"].startswith("nezha-bootstrap/")
    assert json.loads(register.body) == {"Name": "web-1", "HideForGuest": "on"}
    [server] = cli.fake.servers
    [call] = cli.calls()
    assert call.argv == ["install_agent", "probe.example.test", "5555", server.secret, "--tls"]
    assert call.cwd == str(cli.root / "opt/nezha/agent")
    assert call.stdin == "/dev/null"
    assert "CN" not in call.env and "NEZHA_TOKEN" not in call.env
    assert [key for key, value in call.env.items() if TOKEN in value] == []
    assert outcome.stdout.startswith(f"registered and installed: 'web-1' on {cli.dashboard.url}, online after ")
    assert leak_scan(cli) == []


def test_the_requests_are_list_register_download_in_that_order(cli: Cli) -> None:
    assert cli("run", NODE_NAME="web-1").exit_code == 0

    seen = [(j.method, j.path, j.query) for j in cli.fake.journal]
    assert seen == [
        ("GET", "/api/v1/server/list", "tag=AutoRegister"),
        ("POST", "/api/v1/server/register", "simple=true"),
        # the new server's id (adopted under another URL), read by id above the list's highest (none: 0),
        # window by window until one holds none: never the tag's whole list again (issue 19)
        ("GET", "/api/v1/server/details", "id=" + ",".join(str(i) for i in range(1, 17))),
        ("GET", "/api/v1/server/details", "id=" + ",".join(str(i) for i in range(17, 49))),
        ("GET", "/install.sh", ""),
        ("POST", "/_fake/agent-connect", ""),  # the stub agent, as it starts
        ("GET", "/api/v1/server/details", "id=1"),  # the node online: its server reported
    ]
    assert "authorization" not in cli.fake.journal[4].headers  # the token goes to the dashboard only


@pytest.mark.parametrize(
    ("args", "env", "body"),
    [
        ((), {}, {"Name": "web-1", "HideForGuest": "on"}),
        ((), {"NEZHA_TAG": "edge"}, {"Name": "web-1", "Tag": "edge", "HideForGuest": "on"}),
        ((), {"NEZHA_NOTE": "rack 4"}, {"Name": "web-1", "Note": "rack 4", "HideForGuest": "on"}),
        ((), {"NEZHA_HIDE_FOR_GUEST": "false"}, {"Name": "web-1", "HideForGuest": "off"}),
        (("--show-for-guest",), {}, {"Name": "web-1", "HideForGuest": "off"}),
        (("--tag", "db", "--note", "", "--hide-for-guest"), {"NEZHA_TAG": "edge"},
         {"Name": "web-1", "Tag": "db", "Note": "", "HideForGuest": "on"}),
    ],
)
def test_the_body_has_name_and_only_the_fields_that_were_set(
    cli: Cli, args: tuple[str, ...], env: dict[str, str], body: dict[str, str]
) -> None:
    outcome = cli("run", *args, NODE_NAME="web-1", **env)

    assert outcome.exit_code == 0, outcome.stderr
    [register] = cli.fake.registrations()
    assert json.loads(register.body) == body
    [server] = cli.fake.servers
    assert (server.tag, server.note, server.hide_for_guest) == (
        body.get("Tag", "AutoRegister"), body.get("Note", ""), body["HideForGuest"] == "on")


@pytest.mark.parametrize(
    ("template", "name"),
    [
        ('say "hi" \\ {machine_id}', 'say "hi" \\ 01234567'),
        ("узел 🚀 «один»", "узел 🚀 «один»"),
        ("it's $(reboot) `id`", "it's $(reboot) `id`"),
    ],
)
def test_a_name_with_quotes_or_emoji_reaches_the_dashboard_intact(cli: Cli, template: str, name: str) -> None:
    outcome = cli("run", NODE_NAME=template)

    assert outcome.exit_code == 0, outcome.stderr
    [register] = cli.fake.registrations()
    assert json.loads(register.body.decode("utf-8"))["Name"] == name
    assert [server.name for server in cli.fake.servers] == [name]
    assert saved_state(cli)["name"] == name


@pytest.mark.parametrize(
    ("args", "env", "argv_after_secret"),
    [
        (("--no-tls",), {}, []),
        ((), {"NEZHA_PROBE_TLS": "false"}, []),
        ((), {"NEZHA_AGENT_FLAGS": "--disable-command-execute --report-delay 3"},
         ["--tls", "--disable-command-execute", "--report-delay", "3"]),
        (("--agent-flag", "--gpu", "--agent-flag=-u=60", "--no-tls"), {}, ["--gpu", "-u", "60"]),
    ],
)
def test_tls_and_agent_flags_follow_the_secret(
    cli: Cli, args: tuple[str, ...], env: dict[str, str], argv_after_secret: list[str]
) -> None:
    outcome = cli("run", *args, **env)

    assert outcome.exit_code == 0, outcome.stderr
    [server] = cli.fake.servers
    [call] = cli.calls()
    assert call.argv == ["install_agent", "probe.example.test", "5555", server.secret, *argv_after_secret]


@pytest.mark.parametrize(
    ("address", "port", "host_arg"),
    [
        ("2001:db8::1", "5555", "[2001:db8::1]"),
        ("[2001:db8::7]", "443", "[2001:db8::7]"),
        ("192.0.2.10", "8443", "192.0.2.10"),
        (None, "5555", "127.0.0.1"),  # default: the dashboard URL's host
    ],
)
def test_the_probe_address_and_port_reach_the_installer(
    cli: Cli, address: str | None, port: str, host_arg: str
) -> None:
    outcome = cli("run", NEZHA_PROBE_ADDRESS=address, NEZHA_PROBE_PORT=port)

    assert outcome.exit_code == 0, outcome.stderr
    [server] = cli.fake.servers
    [call] = cli.calls()
    assert call.argv == ["install_agent", host_arg, port, server.secret, "--tls"]
    assert f'"-s" "{host_arg}:{port}"' in (cli.root / UNIT).read_text()


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback address on this host")
def test_a_dashboard_at_an_ipv6_literal_is_the_default_probe_address_in_brackets(cli: Cli) -> None:
    with serve(cli.fake, host="::1") as running:
        outcome = cli("run", NEZHA_DASHBOARD_URL=running.url, NEZHA_PROBE_ADDRESS=None)

    assert outcome.exit_code == 0, outcome.stderr
    [server] = cli.fake.servers
    assert cli.calls()[0].argv == ["install_agent", "[::1]", "5555", server.secret, "--tls"]
    assert saved_state(cli)["probe_address"] == "::1"


def test_a_dashboard_behind_a_sub_path_is_asked_under_it(cli: Cli) -> None:
    outcome = cli("run", NEZHA_DASHBOARD_URL=f"{cli.dashboard.url}/nezha/")

    assert outcome.exit_code == 3  # the fake serves no sub-path: its 404 page
    assert [(j.method, j.path) for j in cli.fake.journal] == [("GET", "/nezha/api/v1/server/list")]
    assert "HTTP 404 with an HTML page" in outcome.stderr


@pytest.mark.parametrize(
    ("args", "cn_in_environment", "cn_seen"),
    [
        ((), "1", None),
        ((), "false", None),
        (("--mirror", "cn"), None, "1"),
        (("--mirror", "cn"), "false", "1"),
    ],
)
def test_cn_reaches_the_installer_only_with_mirror_cn(
    cli: Cli, args: tuple[str, ...], cn_in_environment: str | None, cn_seen: str | None
) -> None:
    outcome = cli("run", *args, CN=cn_in_environment)

    assert outcome.exit_code == 0, outcome.stderr
    [call] = cli.calls()
    assert call.env.get("CN") == cn_seen


def test_the_state_file_is_0600_in_a_0700_directory_with_what_was_done(cli: Cli) -> None:
    assert cli("run", NODE_NAME="web-1", NEZHA_TAG="edge").exit_code == 0

    state_file = cli.root / STATE
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(state_file.parent.stat().st_mode) == 0o700
    state = saved_state(cli)
    expected = {
        "version": 1, "dashboard_url": cli.dashboard.url, "name": "web-1", "tag": "edge",
        "probe_address": "probe.example.test", "probe_port": 5555, "tls": True,
        "secret": cli.fake.servers[0].secret, "machine_id": MACHINE_ID,
    }
    assert {key: state.get(key) for key in expected} == expected
    assert all(TIMESTAMP.match(str(state[key])) for key in ("registered_at", "installed_at")), state
    assert sorted(p.name for p in state_file.parent.iterdir()) == ["lock", "state.json"]  # installer removed


def test_the_unit_carries_the_server_the_secret_and_tls_as_verified(cli: Cli) -> None:
    assert cli("run").exit_code == 0

    [server] = cli.fake.servers
    unit = (cli.root / UNIT).read_text()
    exec_start = f'/opt/nezha/agent/nezha-agent "-s" "probe.example.test:5555" "-p" "{server.secret}" "--tls"'
    assert f"ExecStart={exec_start}\n" in unit
    assert "WorkingDirectory=/opt/nezha/agent" in unit
    assert os.access(cli.root / "opt/nezha/agent/nezha-agent", os.X_OK)


def test_the_pending_record_names_what_is_being_registered_and_the_servers_it_had(cli: Cli) -> None:
    """Written before the register POST: a rerun after a kill looks for exactly this name, tag and dashboard."""
    older = [cli.fake.create("web-7", tag="edge").id, cli.fake.create("web-7", tag="edge").id]
    cli.fake.create("web-7", tag="AutoRegister")  # another tag: not the same name to the dashboard
    cli.fake.create("web-8", tag="edge")
    cli.fake.faults.answer_delay = 0.5  # the record exists while the answer is on its way
    pending = cli.root / "var/lib/nezha-bootstrap/pending.json"
    watcher, run_ended, seen = _watch(pending)

    outcome = cli("run", "--tag", "edge", NODE_NAME="web-7")
    run_ended.set()
    watcher.join()

    assert outcome.exit_code == 0, outcome.stderr
    [(text, mode)] = seen
    record = json.loads(text)
    assert TIMESTAMP.match(record.pop("started_at"))
    assert record == {"version": 1, "dashboard_url": cli.dashboard.url, "name": "web-7", "tag": "edge",
                      "before": sorted(older), "machine_id": MACHINE_ID}
    assert mode == 0o600
    assert not pending.exists()  # removed once the secret was saved


def test_the_pending_record_of_a_run_without_tag_has_the_dashboard_default_tag(cli: Cli) -> None:
    cli.fake.faults.answer_delay = 0.5
    pending = cli.root / "var/lib/nezha-bootstrap/pending.json"
    watcher, run_ended, seen = _watch(pending)

    outcome = cli("run", NODE_NAME="web-9")
    run_ended.set()
    watcher.join()

    assert outcome.exit_code == 0, outcome.stderr
    record = json.loads(seen[0][0])
    assert (record["name"], record["tag"], record["before"]) == ("web-9", "AutoRegister", [])


def _read_when_present(path: Path, run_ended: threading.Event) -> tuple[str, int]:
    """The file's content and mode as soon as it exists (("", 0) if it never did while the run went on:
    no fixed time limit, which a slow start on a loaded machine could pass before the file is written)."""
    while not run_ended.is_set():
        try:
            return path.read_text(), stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            time.sleep(0.002)
    return "", 0


def _watch(path: Path) -> tuple[threading.Thread, threading.Event, list[tuple[str, int]]]:
    """A thread that reads `path` as soon as it exists, until the event (set when the run ended) is set."""
    seen: list[tuple[str, int]] = []
    run_ended = threading.Event()
    watcher = threading.Thread(target=lambda: seen.append(_read_when_present(path, run_ended)))
    watcher.start()
    return watcher, run_ended, seen


# --- later runs ---------------------------------------------------------------------------------

def test_second_run_makes_no_request(cli: Cli) -> None:
    assert cli("run").exit_code == 0
    seen = len(cli.fake.journal)

    outcome = cli("run")

    assert outcome.exit_code == 0
    assert len(cli.fake.journal) == seen
    assert "nothing to do" in outcome.stderr
    assert len(cli.calls()) == 1


def test_resume_after_an_installer_failure_reuses_the_secret(cli: Cli) -> None:
    failed = cli("run", NEZHA_STUB_MODE="exit1")
    assert failed.exit_code == 5
    assert "install.sh exited with status 1" in failed.stderr
    assert saved_state(cli)["installed_at"] is None

    outcome = cli("run")

    assert outcome.exit_code == 0, outcome.stderr
    assert "plan: install only (registered earlier, the install did not finish)" in outcome.stderr
    assert len(cli.fake.registrations()) == 1
    [server] = cli.fake.servers
    assert [call.argv[3] for call in cli.calls()] == [server.secret, server.secret]
    assert saved_state(cli)["installed_at"] is not None


def test_a_changed_machine_id_registers_anew(cli: Cli) -> None:
    assert cli("run").exit_code == 0
    (cli.root / "etc/machine-id").write_text("f" * 32 + "\n")

    outcome = cli("run")

    assert outcome.exit_code == 0, outcome.stderr
    assert "the machine-id changed" in outcome.stderr
    first, second = cli.fake.servers
    assert [call.argv[3] for call in cli.calls()] == [first.secret, second.secret]
    assert (saved_state(cli)["machine_id"], saved_state(cli)["secret"]) == ("f" * 32, second.secret)
    assert f'"-p" "{second.secret}"' in (cli.root / UNIT).read_text()


def test_another_dashboard_registers_anew(cli: Cli, other_dashboard: Running) -> None:
    assert cli("run").exit_code == 0

    outcome = cli("run", NEZHA_DASHBOARD_URL=other_dashboard.url)

    assert outcome.exit_code == 0, outcome.stderr
    assert f"registered with another dashboard ({cli.dashboard.url})" in outcome.stderr
    assert (len(cli.fake.registrations()), len(other_dashboard.fake.registrations())) == (1, 1)
    [new] = other_dashboard.fake.servers
    assert (saved_state(cli)["dashboard_url"], saved_state(cli)["secret"]) == (other_dashboard.url, new.secret)
    assert cli.calls()[-1].argv[3] == new.secret


def test_force_registers_again_and_warns_about_the_old_server(cli: Cli) -> None:
    assert cli("run").exit_code == 0

    outcome = cli("run", "--force")

    assert outcome.exit_code == 0, outcome.stderr
    assert "warning: the dashboard keeps the server registered before ('vm', tag 'AutoRegister', registered" \
        in outcome.stderr
    assert "delete it in the dashboard" in outcome.stderr
    assert len(cli.fake.registrations()) == 2
    assert saved_state(cli)["secret"] == cli.fake.servers[1].secret


def test_a_node_registering_under_a_name_the_dashboard_has_says_so(cli: Cli) -> None:
    assert cli("run").exit_code == 0
    (cli.root / "var/lib/nezha-bootstrap/state.json").unlink()  # another machine, same name

    outcome = cli("run")

    assert outcome.exit_code == 0, outcome.stderr
    old = cli.fake.servers[0].id
    assert f"warning: the dashboard already had a server named 'vm' under tag 'AutoRegister' (id {old})" \
        in outcome.stderr
    assert len(cli.fake.servers) == 2


def test_a_changed_probe_address_reinstalls_without_registering(cli: Cli) -> None:
    assert cli("run").exit_code == 0
    seen = len(cli.fake.journal)

    outcome = cli("run", NEZHA_PROBE_ADDRESS="probe2.example.test", NEZHA_PROBE_PORT="6000")

    assert outcome.exit_code == 0, outcome.stderr
    assert "the probe address, port or TLS setting changed" in outcome.stderr
    # The script, the stub agent's connection, then the saved server's last_active until it advances.
    assert [j.path for j in cli.fake.journal[seen:]] == [
        "/install.sh", "/_fake/agent-connect", "/api/v1/server/details", "/api/v1/server/details"]
    [server] = cli.fake.servers
    assert cli.calls()[-1].argv == ["install_agent", "probe2.example.test", "6000", server.secret, "--tls"]
    assert (saved_state(cli)["probe_address"], saved_state(cli)["probe_port"]) == ("probe2.example.test", 6000)
    assert '"-s" "probe2.example.test:6000"' in (cli.root / UNIT).read_text()


def test_a_failed_reinstall_is_not_taken_for_done_when_the_settings_go_back(cli: Cli) -> None:
    assert cli("run").exit_code == 0
    assert cli("run", NEZHA_PROBE_ADDRESS="probe2.example.test", NEZHA_STUB_MODE="wrongunit").exit_code == 5

    outcome = cli("run")

    assert outcome.exit_code == 0, outcome.stderr
    assert "plan: install only (registered earlier, the install did not finish)" in outcome.stderr
    assert '"-s" "probe.example.test:5555"' in (cli.root / UNIT).read_text()
    assert len(cli.fake.registrations()) == 1


def test_a_changed_name_warns_and_does_nothing(cli: Cli) -> None:
    assert cli("run", NODE_NAME="web-1").exit_code == 0
    seen = len(cli.fake.journal)

    outcome = cli("run", NODE_NAME="web-2")

    assert outcome.exit_code == 0
    assert len(cli.fake.journal) == seen
    assert "warning: the name or tag changed (was 'web-1', tag None)" in outcome.stderr
    assert saved_state(cli)["name"] == "web-1"


def test_a_missing_unit_reinstalls_with_the_saved_secret(cli: Cli) -> None:
    assert cli("run").exit_code == 0
    (cli.root / UNIT).unlink()

    outcome = cli("run")

    assert outcome.exit_code == 0, outcome.stderr
    assert "the agent unit is gone" in outcome.stderr
    assert len(cli.fake.registrations()) == 1
    assert (cli.root / UNIT).exists()


# --- every exit code ----------------------------------------------------------------------------

def test_invalid_settings_exit_2_listing_every_problem_and_touch_nothing(cli: Cli) -> None:
    before = snapshot(cli.root)

    outcome = cli("run", NEZHA_DASHBOARD_URL="ftp://dash", NEZHA_PROBE_PORT="70000",
                  NEZHA_AGENT_FLAGS="--insecure", NODE_NAME="a\nb", NEZHA_PROBE_ADDRESS="x;reboot")

    assert outcome.exit_code == 2
    problems = [line for line in outcome.stderr.splitlines() if line.startswith("  - ")]
    assert len(problems) == 5, outcome.stderr
    for part in ("dashboard URL 'ftp://dash'", "probe port", "--insecure", "control characters", "x;reboot"):
        assert part in outcome.stderr
    assert outcome.stdout == ""
    assert cli.fake.journal == []
    assert snapshot(cli.root) == before


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ({"NEZHA_TOKEN": "wrong-token"}, "the dashboard refused the API token"),
        ({"NEZHA_TOKEN": f"Bearer{TOKEN}"}, "the dashboard refused the API token"),
    ],
)
def test_a_refused_token_exits_3_without_retrying(cli: Cli, setup: dict[str, str], message: str) -> None:
    outcome = cli("run", **setup)

    assert outcome.exit_code == 3
    assert message in outcome.stderr
    assert len(cli.fake.journal) == 1  # the first refusal ends the run
    assert cli.fake.servers == [] and cli.calls() == []


def test_a_refused_token_names_the_file_it_came_from(cli: Cli, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("wrong-token\n")

    outcome = cli("run", "--token-file", str(token_file), NEZHA_TOKEN=None)

    assert outcome.exit_code == 3
    assert f"Check the token in --token-file {token_file}:" in outcome.stderr
    assert "wrong-token" not in outcome.stderr


@pytest.mark.parametrize("generation", ["v1.0", "v1.5"])
def test_a_v1_dashboard_exits_3_and_says_so(cli: Cli, generation: str) -> None:
    cli.fake.faults.v1 = generation

    outcome = cli("run")

    assert outcome.exit_code == 3
    assert "this dashboard is v1 or newer" in outcome.stderr
    assert cli.calls() == []
    assert not (cli.root / STATE).exists()


def test_a_dashboard_that_stays_down_exits_4_at_the_deadline(cli: Cli, closed_port: int) -> None:
    started = time.monotonic()

    outcome = cli("run", NEZHA_DASHBOARD_URL=f"http://127.0.0.1:{closed_port}", NEZHA_BOOTSTRAP_DEADLINE="1")

    assert outcome.exit_code == 4
    assert "within the 1 s deadline" in outcome.stderr
    assert time.monotonic() - started < 1 + 2  # the deadline, plus 2 s at most
    assert not (cli.root / STATE).exists()


def test_a_failing_dashboard_recovers_within_the_deadline(cli: Cli) -> None:
    cli.fake.faults.fail_next = [503, 503]

    outcome = cli("run")

    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.stderr.count("retrying in") == 2
    assert len(cli.fake.servers) == 1


@pytest.mark.parametrize(
    ("env", "message", "calls"),
    [
        ({"NEZHA_STUB_MODE": "exit1"}, "install.sh exited with status 1", 1),
        ({"NEZHA_STUB_MODE": "nounit"}, "wrote no agent unit", 1),
        ({"NEZHA_STUB_MODE": "wrongunit"}, "does not start the agent as asked: server address, TLS differ", 1),
        ({"NEZHA_INSTALL_SCRIPT_SHA256": "0" * 64}, "refusing to run it", 0),
        ({"NEZHA_INSTALL_SCRIPT_URL": "{url}/missing.sh"}, "HTTP 404", 0),
    ],
)
def test_an_installer_failure_exits_5_and_keeps_the_secret(
    cli: Cli, env: dict[str, str], message: str, calls: int
) -> None:
    env = {key: value.format(url=cli.dashboard.url) for key, value in env.items()}

    outcome = cli("run", **env)

    assert outcome.exit_code == 5
    assert message in outcome.stderr
    assert len(cli.calls()) == calls
    state = saved_state(cli)
    assert (state["secret"], state["installed_at"]) == (cli.fake.servers[0].secret, None)


def test_a_held_lock_exits_6_after_the_lock_timeout(cli: Cli) -> None:
    lock = cli.root / "var/lib/nezha-bootstrap/lock"
    lock.parent.mkdir(parents=True, mode=0o700)
    with open(lock, "w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        started = time.monotonic()

        outcome = cli("run", "--lock-timeout", "0.5")

        waited = time.monotonic() - started
    assert outcome.exit_code == 6
    assert "another nezha-bootstrap run holds" in outcome.stderr
    assert 0.5 <= waited < 0.5 + 2  # the lock timeout, plus 2 s at most
    assert cli.fake.journal == []


def test_a_corrupt_state_file_exits_1_and_is_kept_aside(cli: Cli) -> None:
    state_file = cli.root / STATE
    state_file.parent.mkdir(parents=True, mode=0o700)
    state_file.write_text("{not json")

    outcome = cli("run")

    assert outcome.exit_code == 1
    assert "is unreadable (it is not valid state JSON)" in outcome.stderr
    [aside] = state_file.parent.glob("state.json.corrupt-*")
    assert aside.read_text() == "{not json"
    assert cli.fake.journal == []
    assert cli("run").exit_code == 0  # as the message says: running again registers anew


def test_an_unusable_state_directory_exits_1(cli: Cli) -> None:
    (cli.root / "var/lib").mkdir(parents=True)
    (cli.root / "var/lib/nezha-bootstrap").write_text("a file where the directory belongs")

    outcome = cli("run")

    assert outcome.exit_code == 1
    assert "cannot create the private directory" in outcome.stderr
    assert "Traceback" not in outcome.stderr
    assert cli.fake.journal == []


def test_a_state_from_a_newer_version_exits_1_and_is_left_alone(cli: Cli) -> None:
    state_file = cli.root / STATE
    state_file.parent.mkdir(parents=True, mode=0o700)
    state_file.write_text('{"version": 99}')

    outcome = cli("run")

    assert outcome.exit_code == 1
    assert "written by a newer nezha-bootstrap" in outcome.stderr
    assert state_file.read_text() == '{"version": 99}'


# --- --dry-run ----------------------------------------------------------------------------------

def test_dry_run_prints_the_plan_and_touches_neither_network_nor_disk(cli: Cli) -> None:
    before = snapshot(cli.root)

    outcome = cli("run", "--dry-run", NODE_NAME="web-1", NEZHA_TAG="edge")

    assert outcome.exit_code == 0, outcome.stderr
    assert cli.fake.journal == [] and cli.calls() == []
    assert snapshot(cli.root) == before
    script = cli.root / "var/lib/nezha-bootstrap/installer/install.sh"
    lines = outcome.stdout.splitlines()
    assert lines[0] == "plan: register and install (no saved state: this node was never registered)"
    for expected in (
        f"POST {cli.dashboard.url}/api/v1/server/register?simple=true",
        "  Authorization: <token>",
        '  body: {"Name": "web-1", "Tag": "edge", "HideForGuest": "on"}',
        f"write {cli.root / STATE} (0600): the node secret",
        f"check SHA-256 {cli.fake.script_sha256}",
        f"run: sh {script} install_agent probe.example.test 5555 '<secret>' --tls",
        f"  cwd {cli.root / 'opt/nezha/agent'}, stdin /dev/null, environment: unset CN, unset NEZHA_TOKEN",
    ):
        assert expected in lines, expected
    assert TOKEN not in outcome.stdout + outcome.stderr


def test_dry_run_of_an_unfinished_install_masks_the_saved_secret(cli: Cli) -> None:
    assert cli("run", NEZHA_STUB_MODE="exit1").exit_code == 5
    before, requests = snapshot(cli.root), len(cli.fake.journal)

    outcome = cli("run", "--dry-run", "--mirror", "cn")

    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.stdout.startswith("plan: install only (registered earlier, the install did not finish)\n")
    assert "POST" not in outcome.stdout
    assert "install_agent probe.example.test 5555 '<secret>' --tls" in outcome.stdout
    assert "environment: CN=1, unset NEZHA_TOKEN" in outcome.stdout
    assert (snapshot(cli.root), len(cli.fake.journal)) == (before, requests)
    assert leak_scan(cli) == []


def test_dry_run_json_is_one_object_with_the_masked_request(cli: Cli) -> None:
    outcome = cli("run", "--dry-run", "--json", NODE_NAME="web-1")

    assert outcome.exit_code == 0, outcome.stderr
    plan = json.loads(outcome.stdout)
    assert {k: plan[k] for k in ("outcome", "action", "name", "dashboard", "exit_code")} == {
        "outcome": "dry_run", "action": "register", "name": "web-1", "dashboard": cli.dashboard.url, "exit_code": 0,
    }
    assert plan["request"] == {
        "method": "POST", "url": f"{cli.dashboard.url}/api/v1/server/register?simple=true",
        "headers": {"Authorization": "<token>"}, "body": {"Name": "web-1", "HideForGuest": "on"},
    }
    assert any("install_agent probe.example.test 5555 '<secret>' --tls" in line for line in plan["install"])
    assert cli.fake.journal == []


def test_dry_run_with_a_corrupt_state_file_exits_1_and_leaves_it(cli: Cli) -> None:
    state_file = cli.root / STATE
    state_file.parent.mkdir(parents=True, mode=0o700)
    state_file.write_text("{not json")
    before = snapshot(cli.root)

    outcome = cli("run", "--dry-run")

    assert outcome.exit_code == 1
    assert "is unreadable (it is not valid state JSON); it was left as it is" in outcome.stderr
    assert snapshot(cli.root) == before


# --- issue 19: one list of the tag per v0 node, whatever the fleet -----------------------------------

def lists_of_the_tag(fake: FakeDashboard) -> int:
    return sum(1 for j in fake.journal if j.path == "/api/v1/server/list")


def test_in_a_fleet_under_the_same_tag_a_run_lists_once_and_finds_its_id_by_id(cli: Cli) -> None:
    for i in range(300):
        cli.fake.create(f"fleet-{i}")  # ids 1-300, all under AutoRegister: the list this node reads

    assert cli("run", NODE_NAME="web-1").exit_code == 0

    assert lists_of_the_tag(cli.fake) == 1  # before registering (exactly-once); neither after nor while waiting
    assert [j.query for j in cli.fake.journal if j.path == "/api/v1/server/details"] == [
        "id=" + ",".join(str(i) for i in range(301, 317)),  # the ids above the list's highest: 301 is this node's
        "id=" + ",".join(str(i) for i in range(317, 349)),  # none there: the end of the ids
        "id=301",  # the online wait, by id
    ]
    assert json.loads((cli.root / "var/lib/nezha-bootstrap/state.json").read_text())["server_id"] == 301


def test_when_many_servers_were_made_under_other_tags_the_id_is_found_by_a_second_list(cli: Cli) -> None:
    for i in range(300):
        cli.fake.create(f"other-{i}", tag="other")  # ids 1-300 under another tag: this node's list is empty

    assert cli("run", NODE_NAME="web-1").exit_code == 0

    # 240 ids read by id (1-240) without reaching the end: the tag is listed once more, as before issue 19
    assert lists_of_the_tag(cli.fake) == 2
    assert json.loads((cli.root / "var/lib/nezha-bootstrap/state.json").read_text())["server_id"] == 301
    assert [j.query for j in cli.fake.journal if j.path == "/api/v1/server/details"][-1] == "id=301"


def test_after_a_gap_of_deleted_ids_the_id_is_found_by_a_second_list_not_lost(cli: Cli) -> None:
    for i in range(3):
        cli.fake.create(f"fleet-{i}")  # ids 1-3, in this node's list
    for i in range(40):
        cli.fake.delete(cli.fake.create(f"scaled-in-{i}").id)  # ids 4-43, deleted: no server answers for them

    assert cli("run", NODE_NAME="web-1").exit_code == 0

    # the first window (4-19) is empty with nothing found: the tag is listed again, once (the unit test of the
    # fallback itself is test_dashboard's gap test)
    assert lists_of_the_tag(cli.fake) == 2
    assert json.loads((cli.root / "var/lib/nezha-bootstrap/state.json").read_text())["server_id"] == 44
