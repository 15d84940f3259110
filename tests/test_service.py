"""`install-service`, `seal` and `uninstall`: their plans (dry-run) and what they leave on a test root."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
from pathlib import Path

import pytest

from nezha_bootstrap import effects, state
from nezha_bootstrap.cli import main
from nezha_bootstrap.errors import InternalError
from nezha_bootstrap.firstboot import render, service
from nezha_bootstrap.paths import Paths
from nezha_bootstrap.report import Reporter
from tests import envfile
from tests.conftest import MACHINE_ID, TOKEN, Cli, Outcome, leak_scan, make_runner

URL = "https://nezha.example.com"
UNIT_LINK = "/etc/systemd/system/nezha-bootstrap.service"
SAVED = state.State(dashboard_url=URL, name="web-1", tag=None, probe_address="nezha.example.com", probe_port=5555,
                    tls=True, secret="S3cretS3cretS3cret", machine_id=MACHINE_ID,
                    registered_at="2025-01-01T00:00:00+00:00", installed_at="2025-01-01T00:00:05+00:00")


def invoke(*args: str, **env: str) -> Outcome:
    result = make_runner().invoke(main, list(args), env=env, catch_exceptions=False)
    return Outcome(result, result.stdout, result.stderr)


def tree(root: Path) -> dict[str, str]:
    """Every path under root with its kind and content, to show a dry run changed nothing."""
    found = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            found[key] = "-> " + os.readlink(path)
        elif path.is_file():
            found[key] = f"{stat.S_IMODE(path.stat().st_mode):o} {path.read_bytes()!r}"
        else:
            found[key] = "dir"
    return found


def install_v0_agent(root: Path) -> Paths:
    """What `run` leaves behind with the v0 script: binary, 0600 unit, its wants link, the state."""
    paths = Paths(root)
    paths.agent_dir.mkdir(parents=True)
    paths.agent_binary.write_text("#!/bin/sh\n")
    paths.agent_binary.chmod(0o755)
    paths.agent_unit.parent.mkdir(parents=True, exist_ok=True)
    paths.agent_unit.write_text(f'[Service]\nExecStart=/opt/nezha/agent/nezha-agent "-p" "{SAVED.secret}"\n')
    paths.agent_wants_link.parent.mkdir(parents=True, exist_ok=True)
    paths.agent_wants_link.symlink_to("/etc/systemd/system/nezha-agent.service")
    state.save(paths, SAVED)
    (root / "var/lib/dbus").mkdir(parents=True)
    paths.dbus_machine_id.symlink_to("/etc/machine-id")
    return paths


def install_service_by_hand(paths: Paths) -> None:
    effects.apply(service.plan_install_service(
        paths, render.env_file([("NEZHA_DASHBOARD_URL", URL), ("NEZHA_TOKEN", TOKEN)]), use_systemctl=False),
        Reporter(verbosity=-1))


# --- install-service ---------------------------------------------------------------------------

def test_install_service_under_a_root_writes_unit_and_settings_and_links_the_unit(root: Path) -> None:
    paths = Paths(root)

    plan = service.plan_install_service(paths, "SETTINGS\n", use_systemctl=False)

    assert plan.describe() == [
        f"write {root}/etc/systemd/system/nezha-bootstrap.service (mode 0644)",
        f"write {root}/etc/nezha-bootstrap/env (mode 0600)",
        f"link {root}/etc/systemd/system/multi-user.target.wants/nezha-bootstrap.service -> {UNIT_LINK}",
    ]


def test_install_service_on_a_running_systemd_enables_the_unit_with_systemctl(root: Path) -> None:
    plan = service.plan_install_service(Paths(root), "SETTINGS\n", use_systemctl=True)

    assert plan.describe()[2:] == ["run: systemctl daemon-reload", "run: systemctl enable nezha-bootstrap.service"]


def test_install_service_unit_only_writes_no_settings_and_says_the_unit_waits_for_them(root: Path) -> None:
    plan = service.plan_install_service(Paths(root), None, use_systemctl=False)

    assert [line.split()[0] for line in plan.describe()] == ["write", "link"]
    assert any("the unit is skipped until one is written" in note for note in plan.notes)


@pytest.mark.parametrize(("tool_present", "notes"), [(False, 1), (True, 0)])
def test_install_service_says_when_the_tool_is_not_where_the_unit_runs_it(root: Path, tool_present: bool,
                                                                          notes: int) -> None:
    if tool_present:
        tool = root / render.TOOL.lstrip("/")
        tool.parent.mkdir(parents=True)
        tool.write_text("#!/bin/sh\n")
        tool.chmod(0o755)

    plan = service.plan_install_service(Paths(root), "SETTINGS\n", use_systemctl=False)

    assert len(plan.notes) == notes


def test_applying_install_service_twice_leaves_the_same_files(root: Path) -> None:
    paths = Paths(root)
    settings = render.env_file([("NEZHA_DASHBOARD_URL", URL), ("NEZHA_TOKEN", TOKEN)])
    plan = service.plan_install_service(paths, settings, use_systemctl=False)

    effects.apply(plan, Reporter(verbosity=-1))
    first = tree(root)
    effects.apply(plan, Reporter(verbosity=-1))

    assert tree(root) == first
    assert paths.service_unit.read_text() == render.unit()
    assert stat.S_IMODE(paths.service_unit.stat().st_mode) == 0o644
    assert paths.settings_file.read_text() == settings
    assert stat.S_IMODE(paths.settings_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.settings_dir.stat().st_mode) == 0o700
    assert os.readlink(paths.service_wants_link) == UNIT_LINK


def test_install_service_command_writes_the_settings_the_user_set(root: Path) -> None:
    outcome = invoke("install-service", "--root", str(root), "--name", "{hostname}", NEZHA_DASHBOARD_URL=URL,
                     NEZHA_TOKEN=TOKEN)

    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.stdout == "installed: nezha-bootstrap.service runs at the next boot\n"
    written = Paths(root).settings_file.read_text()
    assert envfile.parse(written) == {"NEZHA_DASHBOARD_URL": URL, "NEZHA_TOKEN": TOKEN, "NODE_NAME": "{hostname}"}
    assert TOKEN not in outcome.stderr


def test_install_service_dry_run_prints_the_plan_and_changes_nothing(root: Path) -> None:
    before = tree(root)

    outcome = invoke("install-service", "--root", str(root), "--dry-run", "--json", NEZHA_DASHBOARD_URL=URL,
                     NEZHA_TOKEN=TOKEN)

    assert outcome.exit_code == 0, outcome.stderr
    assert tree(root) == before
    payload = json.loads(outcome.stdout)
    assert payload["outcome"] == "dry_run"
    assert payload["actions"] == service.plan_install_service(Paths(root), "", use_systemctl=False).describe()


@pytest.mark.parametrize(("args", "problem"), [
    (["--root", "relative/root"], "root must be an absolute path"),
    (["--root", "/"], "a credential is required: the v0 API token"),
])
def test_install_service_refuses_invalid_settings_before_writing(args: list[str], problem: str) -> None:
    outcome = invoke("install-service", *args, NEZHA_DASHBOARD_URL=URL)

    assert outcome.exit_code == 2
    assert problem in outcome.stderr
    assert outcome.stdout == ""


# --- install-service --pyz: the tool itself, for images built from outside ----------------------------

ZIPAPP_MAIN = b"import sys\nprint('zipapp ran with', sys.argv[1:], 'isolated' if sys.flags.isolated else '')\n"


def make_zipapp(path: Path) -> Path:
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("__main__.py", ZIPAPP_MAIN)
    return path


def test_install_service_pyz_into_a_root_installs_the_zipapp_and_its_launcher(root: Path, tmp_path: Path) -> None:
    pyz = make_zipapp(tmp_path / "nezha-bootstrap-9.9-x86_64.pyz")

    outcome = invoke("install-service", "--root", str(root), "--pyz", str(pyz), NEZHA_DASHBOARD_URL=URL,
                     NEZHA_TOKEN=TOKEN)

    assert outcome.exit_code == 0, outcome.stderr
    installed, launcher = root / "opt/nezha-bootstrap/nezha-bootstrap.pyz", root / render.TOOL.lstrip("/")
    assert installed.read_bytes() == pyz.read_bytes()
    assert launcher.read_text() == render.launcher()
    assert stat.S_IMODE(installed.stat().st_mode) == stat.S_IMODE(launcher.stat().st_mode) == 0o755
    assert Paths(root).service_unit.read_text() == render.unit()
    assert os.readlink(Paths(root).service_wants_link) == UNIT_LINK
    assert "does not exist" not in outcome.stderr, "the tool is there now: no note that it is missing"


def test_nothing_install_service_pyz_writes_names_a_path_of_the_building_machine(root: Path, tmp_path: Path) -> None:
    (tmp_path / "build").mkdir()
    pyz = make_zipapp(tmp_path / "build" / "x.pyz")

    outcome = invoke("install-service", "--root", str(root), "--pyz", str(pyz), NEZHA_DASHBOARD_URL=URL,
                     NEZHA_TOKEN=TOKEN)

    assert outcome.exit_code == 0, outcome.stderr
    written = {path: path.read_bytes() for path in root.rglob("*") if path.is_file() and not path.is_symlink()}
    assert root / "opt/nezha-bootstrap/nezha-bootstrap.pyz" in written
    assert [p for p, data in written.items() if str(tmp_path).encode() in data] == []
    assert [p for p in root.rglob("*") if p.is_symlink() and str(tmp_path) in os.readlink(p)] == []


@pytest.mark.parametrize(("content", "problem"), [(None, "No such file"), (b"not a zip", "not a zipapp")])
def test_install_service_refuses_a_pyz_that_is_not_a_zipapp_before_writing(root: Path, tmp_path: Path,
                                                                           content: bytes | None, problem: str) -> None:
    pyz = tmp_path / "x.pyz"
    if content is not None:
        pyz.write_bytes(content)
    before = tree(root)

    outcome = invoke("install-service", "--root", str(root), "--pyz", str(pyz), NEZHA_DASHBOARD_URL=URL,
                     NEZHA_TOKEN=TOKEN)

    assert outcome.exit_code == 2
    assert problem in outcome.stderr
    assert tree(root) == before


def test_install_service_pyz_over_a_venv_says_its_script_is_replaced(root: Path, tmp_path: Path) -> None:
    (root / "opt/nezha-bootstrap/bin").mkdir(parents=True)
    (root / "opt/nezha-bootstrap/bin/python").symlink_to("/usr/bin/python3")

    plan = service.plan_install_service(Paths(root), None, use_systemctl=False,
                                        pyz=make_zipapp(tmp_path / "x.pyz").read_bytes())

    assert any("holds a virtualenv" in note for note in plan.notes)


@pytest.mark.root
def test_the_launcher_runs_the_zipapp_when_the_tree_is_the_system(root: Path, tmp_path: Path) -> None:
    """/opt of the built tree mounted over this machine's /opt (a private mount namespace): the launcher
    finds the zipapp by the path it names, as it will in the image."""
    import shutil
    import subprocess

    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("python3"):
        pytest.skip("needs root, unshare and a python3 on PATH")
    outcome = invoke("install-service", "--root", str(root), "--unit-only", "--pyz",
                     str(make_zipapp(tmp_path / "x.pyz")))
    assert outcome.exit_code == 0, outcome.stderr
    script = f"mount --make-rprivate / && mount --bind {root}/opt /opt && exec {render.TOOL} run --flag"

    done = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin"})

    assert done.returncode == 0, done.stderr
    assert done.stdout == "zipapp ran with ['run', '--flag'] isolated\n"


# --- seal ----------------------------------------------------------------------------------------

def test_seal_under_a_root_removes_agent_and_state_and_empties_the_machine_id(root: Path) -> None:
    paths = install_v0_agent(root)

    plan = service.plan_seal(paths, own_system=False)

    assert plan.describe() == [
        f"remove {root}/etc/systemd/system/nezha-agent.service",
        f"remove {root}/etc/systemd/system/multi-user.target.wants/nezha-agent.service",
        f"remove {root}/opt/nezha/agent/nezha-agent",
        f"remove {root}/var/lib/nezha-bootstrap",
        f"empty {root}/etc/machine-id (zero bytes)",
        f"remove {root}/var/lib/dbus/machine-id",
    ]


def test_seal_of_the_own_system_lets_the_agent_uninstall_itself_first(root: Path) -> None:
    paths = install_v0_agent(root)

    plan = service.plan_seal(paths, own_system=True)

    assert plan.describe()[0] == f"run: {root}/opt/nezha/agent/nezha-agent service uninstall"


def add_vendor_leftover(paths: Paths) -> Path:
    """A config-x1.yml and the nezha-agent-<hash> unit the vendor's v1 script leaves beside it."""
    (paths.agent_dir / "config-x1.yml").write_text('uuid: "b"\n')
    digest = hashlib.md5(b"/opt/nezha/agent/config-x1.yml").hexdigest()[:7]  # the agent's own naming
    unit = paths.under(f"/etc/systemd/system/nezha-agent-{digest}.service")
    unit.write_text("[Service]\n")
    return unit


def test_seal_uninstalls_v1_agents_by_their_configs_and_removes_the_configs(root: Path) -> None:
    paths = install_v0_agent(root)
    (paths.agent_dir / "config.yml").write_text('uuid: "a"\n')
    leftover_unit = add_vendor_leftover(paths)

    lines = service.plan_seal(paths, own_system=True).describe()

    agent = f"{root}/opt/nezha/agent"
    assert lines[:2] == [f"run: {agent}/nezha-agent service -c {agent}/config.yml uninstall",
                         f"run: {agent}/nezha-agent service -c {agent}/config-x1.yml uninstall"]
    for path in (leftover_unit, f"{agent}/config.yml", f"{agent}/config-x1.yml"):
        assert f"remove {path}" in lines


def test_seal_dry_run_prints_the_plan_names_the_server_and_changes_nothing(root: Path) -> None:
    install_v0_agent(root)
    install_service_by_hand(Paths(root))
    before = tree(root)

    outcome = invoke("seal", "--root", str(root), "--dry-run")

    assert outcome.exit_code == 0, outcome.stderr
    assert tree(root) == before
    lines = outcome.stdout.splitlines()
    assert lines[:-1] == service.plan_seal(Paths(root), own_system=False).describe()
    assert lines[-1] == f"the server 'web-1' stays in the dashboard {URL}: delete it there (the token API cannot)"


def test_seal_keeps_unit_and_settings_and_leaves_nothing_of_this_machine(root: Path) -> None:
    paths = install_v0_agent(root)
    install_service_by_hand(paths)

    outcome = invoke("seal", "--root", str(root), "--json")

    assert outcome.exit_code == 0, outcome.stderr
    assert sorted(tree(root)) == sorted([
        "etc", "etc/machine-id", "etc/nezha-bootstrap", "etc/nezha-bootstrap/env", "etc/systemd",
        "etc/systemd/system", "etc/systemd/system/multi-user.target.wants",
        "etc/systemd/system/multi-user.target.wants/nezha-bootstrap.service",
        "etc/systemd/system/nezha-bootstrap.service", "opt", "opt/nezha", "opt/nezha/agent", "var", "var/lib",
        "var/lib/dbus",
    ])
    assert paths.machine_id.read_bytes() == b""
    payload = json.loads(outcome.stdout)
    assert (payload["outcome"], payload["server"]) == ("sealed", {"name": "web-1", "id": None, "uuid": None,
                                                                          "dashboard": URL})


@pytest.mark.parametrize(("prepare", "expected"), [
    ("nothing", ["there is no", "there is no"]),
    ("unlinked", ["is not enabled", "there is no"]),
    ("pinned-uuid", ["sets NEZHA_AGENT_UUID"]),
])
def test_seal_warns_when_clones_would_not_register_or_would_share_a_server(root: Path, prepare: str,
                                                                           expected: list[str]) -> None:
    paths = Paths(root)
    if prepare != "nothing":
        install_service_by_hand(paths)
    if prepare == "unlinked":
        paths.service_wants_link.unlink()
        paths.settings_file.unlink()
    if prepare == "pinned-uuid":
        paths.settings_file.write_text('NEZHA_AGENT_UUID="0b0e3f5e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"\n')

    notes = service.plan_seal(paths, own_system=False).notes

    assert len(notes) == len(expected)
    for note, words in zip(notes, expected):
        assert words in note


def test_seal_waits_for_a_running_bootstrap_and_gives_up_with_exit_6(root: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    paths = install_v0_agent(root)
    monkeypatch.setattr(effects, "DEFAULT_LOCK_TIMEOUT", 0.2)

    with state.locked(paths, timeout=1):
        outcome = invoke("seal", "--root", str(root))

    assert outcome.exit_code == 6
    assert "another nezha-bootstrap run holds" in outcome.stderr
    assert paths.state_file.exists() and paths.agent_binary.exists()


# --- uninstall -------------------------------------------------------------------------------------

def test_uninstall_keeps_the_unit_and_warns_that_the_next_boot_registers_again(root: Path) -> None:
    paths = install_v0_agent(root)
    install_service_by_hand(paths)

    outcome = invoke("uninstall", "--root", str(root))

    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.stdout.splitlines() == [
        "uninstalled",
        f"the server 'web-1' stays in the dashboard {URL}: delete it there (the token API cannot)",
    ]
    assert "the next boot registers this server again" in outcome.stderr
    assert not paths.agent_binary.exists() and not paths.state_dir.exists() and not paths.agent_unit.exists()
    assert paths.service_unit.exists() and paths.settings_file.exists()
    assert paths.machine_id.read_text() == MACHINE_ID + "\n"


def test_uninstall_purge_also_removes_the_unit_its_link_and_the_settings(root: Path) -> None:
    paths = install_v0_agent(root)
    install_service_by_hand(paths)

    plan = service.plan_uninstall(paths, own_system=False, use_systemctl=False, purge=True)

    assert plan.describe()[-3:] == [
        f"remove {root}/etc/systemd/system/multi-user.target.wants/nezha-bootstrap.service",
        f"remove {root}/etc/systemd/system/nezha-bootstrap.service",
        f"remove {root}/etc/nezha-bootstrap",
    ]
    assert plan.notes == ()


def test_uninstall_purge_on_a_running_systemd_disables_then_reloads(root: Path) -> None:
    paths = install_v0_agent(root)
    install_service_by_hand(paths)

    lines = service.plan_uninstall(paths, own_system=True, use_systemctl=True, purge=True).describe()

    assert lines[0] == f"run: {root}/opt/nezha/agent/nezha-agent service uninstall"
    assert lines.index("run: systemctl disable nezha-bootstrap.service") < lines.index(
        f"remove {root}/etc/systemd/system/nezha-bootstrap.service")
    assert lines[-1] == "run: systemctl daemon-reload"


def test_uninstall_without_state_says_no_server_was_registered(root: Path) -> None:
    outcome = invoke("uninstall", "--root", str(root), "--dry-run")

    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.stdout.splitlines() == [
        "nothing to do", "no saved state: nezha-bootstrap registered no server from this machine"]


# --- the edge: commands, and the real agent flow ---------------------------------------------------

@pytest.mark.integration
def test_a_failing_command_that_may_fail_is_a_warning_and_the_plan_goes_on(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    marker.write_text("x")
    err = io.StringIO()
    plan = effects.Plan((effects.Command(("sh", "-c", "exit 3"), must_succeed=False), effects.Remove(marker)))

    effects.apply(plan, Reporter(err=err))

    assert "sh -c 'exit 3' exited with status 3; going on" in err.getvalue()
    assert not marker.exists()


@pytest.mark.integration
@pytest.mark.parametrize("argv", [("sh", "-c", "exit 3"), ("/nonexistent/systemctl", "enable")])
def test_a_failing_command_that_must_succeed_stops_the_plan(tmp_path: Path, argv: tuple[str, ...]) -> None:
    marker = tmp_path / "marker"
    marker.write_text("x")
    plan = effects.Plan((effects.Command(argv), effects.Remove(marker)))

    with pytest.raises(InternalError):
        effects.apply(plan, Reporter(err=io.StringIO()))

    assert marker.exists()


@pytest.mark.integration
def test_seal_after_a_real_run_lets_the_agent_uninstall_itself_and_leaves_no_secret(cli: Cli) -> None:
    assert cli("run", NODE_NAME="golden").exit_code == 0
    paths = Paths(cli.root)
    install_service_by_hand(paths)
    err = io.StringIO()

    effects.apply(service.plan_seal(paths, own_system=True), Reporter(verbosity=1, err=err), lock=paths)

    assert "stub nezha-agent: service uninstalled" in err.getvalue()
    assert not paths.agent_unit.exists() and not paths.agent_binary.exists() and not paths.state_dir.exists()
    assert paths.machine_id.read_bytes() == b""
    assert paths.service_unit.exists() and paths.settings_file.exists()
    assert leak_scan(cli) == [str(paths.settings_file)]  # the token, in the 0600 settings file only


@pytest.mark.integration
def test_seal_command_after_a_real_run_names_the_registered_server(cli: Cli) -> None:
    assert cli("run", NODE_NAME="golden").exit_code == 0

    outcome = cli("seal")

    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.stdout.splitlines()[-1] == (
        f"the server 'golden' (id 1) stays in the dashboard {cli.dashboard.url}: delete it there "
        "(the token API cannot)")
    assert not Paths(cli.root).agent_binary.exists()
    assert leak_scan(cli) == []


@pytest.mark.parametrize(("args", "env", "named"), [
    (("--dashboard-url", "https://dash.example.com"), {}, "--dashboard-url"),
    ((), {"NEZHA_TOKEN": "T0kenT0kenT0kenT0kenT0kenT0ken32"}, "--token"),
])
def test_install_service_unit_only_refuses_settings_it_would_drop(root: Path, args: tuple[str, ...],
                                                                   env: dict[str, str], named: str) -> None:
    outcome = invoke("install-service", "--root", str(root), "--unit-only", *args, **env)

    assert outcome.exit_code == 2
    assert f"--unit-only writes no settings file, so {named} (flag or env var) would be dropped" in outcome.stderr
    assert not (root / "etc/systemd/system/nezha-bootstrap.service").exists()


@pytest.mark.parametrize(("server_id", "uuid", "named"), [
    (7, None, "the server 'web-1' (id 7) stays"),
    (7, "2b3c4d5e-0000-5000-8000-000000000001",
     "the server 'web-1' (id 7, uuid 2b3c4d5e-0000-5000-8000-000000000001) stays"),
    (None, None, "the server 'web-1' stays"),
])
def test_the_server_left_in_the_dashboard_is_named_with_its_id(server_id: int | None, uuid: str | None,
                                                               named: str) -> None:
    import dataclasses

    saved = dataclasses.replace(SAVED, server_id=server_id, uuid=uuid)

    assert service.dashboard_note(saved).startswith(named)


def test_uninstall_json_names_the_servers_id(root: Path) -> None:
    import dataclasses

    paths = install_v0_agent(root)
    state.save(paths, dataclasses.replace(SAVED, server_id=12))

    outcome = invoke("uninstall", "--root", str(root), "--json")

    assert outcome.exit_code == 0, outcome.stderr
    assert json.loads(outcome.stdout)["server"] == {"name": "web-1", "id": 12, "uuid": None, "dashboard": URL}
