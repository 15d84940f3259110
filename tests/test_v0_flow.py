"""The v0 flow's decisions as data (v0/flow.py): what a run does from its settings and the saved state, what
differs from the last install, and what --dry-run says it would send. No dashboard, no installer."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import stat
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nezha_bootstrap import agent, identity, online, redact
from nezha_bootstrap import state as state_mod
from nezha_bootstrap.config import AgentSettings, Config, Settings, build, display_url
from nezha_bootstrap.effects import Command
from nezha_bootstrap.errors import DashboardRefused, DashboardUnreachable, InstallerFailed, StateError
from nezha_bootstrap.facts import Facts
from nezha_bootstrap.http import make_client
from nezha_bootstrap.node import ThisNode
from nezha_bootstrap.online import Look, NotOnline, Outcome
from nezha_bootstrap.paths import Paths
from nezha_bootstrap.report import Reporter
from nezha_bootstrap.retry import Transient
from nezha_bootstrap.state import Pending, State
from nezha_bootstrap.system import COMMAND_TIMEOUT
from nezha_bootstrap.v0 import flow
from nezha_bootstrap.v0.direct import V0Install
from nezha_bootstrap.v0.flow import Action, Decision, decide, install_drift
from nezha_bootstrap.v0.script import InstallPlan
from tests.conftest import Cli, leak_scan

URL = "https://dash.example.com"
MACHINE = "0123456789abcdef0123456789abcdef"
FACTS = Facts(hostname="web-1", primary_ipv4="192.0.2.10", machine_id=MACHINE, systemd_running=False)
TOKEN = "t0ken-for-the-v0-flow"
SECRET = "n0deSecretOfTheSavedState"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00$")


def config_of(*, method: str | None = None, **settings: Any) -> Config:
    values: dict[str, Any] = {"dashboard_url": URL, "token": TOKEN, "name": "web-1",
                              "probe_address": "probe.example.com", **settings}
    return build(Settings(**values, agent=AgentSettings(method=method)), FACTS).config


def saved_of(config: Config, **changes: Any) -> State:
    """The state a finished install of `config` left behind, with `changes`."""
    state = State(
        dashboard_url=config.dashboard_url, name=config.name, tag=config.tag, probe_address=config.probe_address,
        probe_port=config.probe_port, tls=config.tls, secret=SECRET, machine_id=MACHINE,
        registered_at="2026-01-02T03:04:05+00:00", installed_at="2026-01-02T03:04:09+00:00",
        method=flow.method_of(config), agent_flags=config.agent_flags, agent_version=flow.agent_version_of(config),
    )
    return dataclasses.replace(state, **changes)


# --- decide: what a run does ------------------------------------------------------------------------

def test_a_node_never_registered_registers() -> None:
    assert decide(config_of(), None, FACTS, []) == Decision(
        Action.REGISTER, "no saved state: this node was never registered")


@pytest.mark.parametrize(("tag", "shown"), [(None, "'AutoRegister'"), ("edge", "'edge'")])
def test_force_registers_again_and_names_the_server_it_leaves_behind(tag: str | None, shown: str) -> None:
    config = config_of(force=True, tag=tag)
    saved = saved_of(config, name="old-name")

    decision = decide(config, saved, FACTS, ["the agent unit is gone"])

    assert (decision.action, decision.reason) == (Action.REGISTER, "--force")
    assert decision.notes == (
        f"the dashboard keeps the server registered before ('old-name', tag {shown}, registered "
        "2026-01-02T03:04:05+00:00); the token API cannot delete it: delete it in the dashboard",)


def test_the_same_dashboard_spelled_otherwise_is_not_another_one() -> None:
    config = config_of()
    saved = saved_of(config, dashboard_url="HTTPS://Dash.Example.com:443/")

    assert decide(config, saved, FACTS, []) == Decision(Action.NOTHING, "registered and installed")


@pytest.mark.parametrize("generation", [None, "v0"])
def test_a_v0_server_id_under_another_url_of_this_machine_is_looked_for(generation: str | None) -> None:
    config = config_of()
    saved = saved_of(config, dashboard_url="https://old.example.com", server_id=7, generation=generation)

    assert decide(config, saved, FACTS, []) == Decision(
        Action.ADOPT, "registered as server 7 with https://old.example.com, maybe the same dashboard")


@pytest.mark.parametrize("changes", [
    {"server_id": None},  # no id recorded (an older version, or the list failed): nothing to look for
    {"server_id": 7, "generation": "v1"},  # another generation's row: no node secret
    {"server_id": 7, "machine_id": "f" * 32},  # a clone of a registered image
], ids=["no-id", "v1-state", "other-machine"])
def test_another_dashboard_without_a_v0_server_of_this_machine_registers(changes: dict[str, Any]) -> None:
    config = config_of()
    saved = saved_of(config, dashboard_url="https://old.example.com", **changes)

    assert decide(config, saved, FACTS, []) == Decision(
        Action.REGISTER, "registered with another dashboard (https://old.example.com)")


def test_another_machine_id_registers() -> None:
    config = config_of()

    assert decide(config, saved_of(config, machine_id="f" * 32), FACTS, []) == Decision(
        Action.REGISTER, "the machine-id changed: this is a clone of a registered image")


def test_another_cloud_init_instance_under_the_same_machine_id_registers_and_says_why() -> None:
    config = config_of()
    facts = FACTS.replace(instance_id="i-new")

    decision = decide(config, saved_of(config, instance_id="i-old"), facts, [])

    assert decision == Decision(Action.REGISTER, "cloud-init's instance-id changed under the same machine-id",
                                (identity.unsealed_note("i-old", "i-new"),))


def test_an_instance_id_recorded_late_is_no_reason_to_register() -> None:
    config = config_of()
    facts = FACTS.replace(instance_id="i-new")

    assert decide(config, saved_of(config), facts, []).action is Action.NOTHING


def test_an_unfinished_install_installs_before_anything_on_disk_is_looked_at() -> None:
    config = config_of()
    saved = saved_of(config, installed_at=None, probe_port=1)

    assert decide(config, saved, FACTS, ["the agent unit is gone"]) == Decision(
        Action.INSTALL, "registered earlier, the install did not finish")


def test_drift_on_disk_reinstalls_naming_every_difference() -> None:
    config = config_of()

    assert decide(config, saved_of(config), FACTS, ["the agent unit is gone", "the binary is gone"]) == Decision(
        Action.INSTALL, "the agent unit is gone; the binary is gone")


def test_changed_settings_reinstall_naming_every_difference() -> None:
    config = config_of(probe_port="6000", agent_flags=("--disable-command-execute",))
    saved = saved_of(config, probe_port=5555, agent_flags=())

    assert decide(config, saved, FACTS, []) == Decision(
        Action.INSTALL, "the probe address, port or TLS setting changed; the agent flags changed "
                        "(none -> --disable-command-execute)")


def test_a_registered_and_installed_node_does_nothing() -> None:
    config = config_of()

    assert decide(config, saved_of(config), FACTS, []) == Decision(Action.NOTHING, "registered and installed")


NAME_NOTE = ("the name or tag changed (was 'old-name', tag {tag!r}); the v0 token API cannot rename a server: "
             "rename it in the dashboard, or use --force to register a new one")


@pytest.mark.parametrize(("on_disk", "changes", "action"), [
    ([], {}, Action.NOTHING),
    ([], {"installed_at": None}, Action.INSTALL),
    (["the agent unit is gone"], {}, Action.INSTALL),
    ([], {"tls": False}, Action.INSTALL),
], ids=["nothing", "unfinished", "on-disk", "settings"])
def test_a_changed_name_is_a_warning_whatever_else_the_run_does(
        on_disk: list[str], changes: dict[str, Any], action: Action) -> None:
    config = config_of()
    saved = saved_of(config, name="old-name", **changes)

    decision = decide(config, saved, FACTS, on_disk)

    assert (decision.action, decision.notes) == (action, (NAME_NOTE.format(tag=None),))


@pytest.mark.parametrize(("saved_tag", "tag"), [(None, "edge"), ("edge", None), ("edge", "db")])
def test_a_changed_tag_is_the_same_warning(saved_tag: str | None, tag: str | None) -> None:
    config = config_of(tag=tag)
    saved = saved_of(config, tag=saved_tag)

    assert decide(config, saved, FACTS, []).notes == (
        f"the name or tag changed (was 'web-1', tag {saved_tag!r}); the v0 token API cannot rename a server: "
        "rename it in the dashboard, or use --force to register a new one",)


# --- install_drift: how the settings differ from the last install -------------------------------------

@pytest.mark.parametrize("changes", [{"probe_address": "other.example.com"}, {"probe_port": 1}, {"tls": False}])
def test_the_probe_address_port_or_tls_differing_is_drift(changes: dict[str, Any]) -> None:
    config = config_of()

    assert install_drift(config, saved_of(config, **changes)) == ["the probe address, port or TLS setting changed"]


def test_nothing_differing_is_no_drift() -> None:
    for config in (config_of(), config_of(method="direct", agent_flags=("--report-delay", "3"))):
        assert install_drift(config, saved_of(config)) == []


def test_a_value_not_recorded_is_not_compared() -> None:
    config = config_of(method="direct", agent_flags=("--skip-conn",))
    saved = saved_of(config, method=None, agent_flags=None, agent_version=None)

    assert install_drift(config, saved) == []


def test_another_install_method_is_drift() -> None:
    direct, script = config_of(method="direct"), config_of()

    assert install_drift(direct, saved_of(script)) == ["the install method changed (script -> direct)"]
    assert install_drift(script, saved_of(direct)) == ["the install method changed (direct -> script)"]


def test_other_agent_flags_are_drift_naming_both_sets() -> None:
    config = config_of(agent_flags=("--skip-conn", "--skip-procs"))

    assert install_drift(config, saved_of(config, agent_flags=())) == [
        "the agent flags changed (none -> --skip-conn --skip-procs)"]
    assert install_drift(config_of(), saved_of(config)) == [
        "the agent flags changed (--skip-conn --skip-procs -> none)"]


def test_another_pinned_agent_version_is_drift_for_the_direct_method_only() -> None:
    direct = config_of(method="direct")
    wanted = flow.agent_version_of(direct)

    assert install_drift(direct, saved_of(direct, agent_version="v0.1.0")) == [
        f"the agent version changed (v0.1.0 -> {wanted})"]
    script = config_of()
    assert install_drift(script, saved_of(script, agent_version="v0.1.0")) == []  # install.sh picks its own
    # switching methods: the method's drift alone (a version of another method is not comparable)
    assert install_drift(direct, saved_of(script, agent_version="v0.1.0")) == [
        "the install method changed (script -> direct)"]


def test_every_difference_is_named_in_one_order() -> None:
    config = config_of(method="direct", agent_flags=("--skip-conn",))
    saved = saved_of(config_of(), tls=False, agent_version="v0.1.0")

    assert install_drift(config, saved) == [
        "the probe address, port or TLS setting changed",
        "the install method changed (script -> direct)",
        "the agent flags changed (none -> --skip-conn)",
    ]
    assert install_drift(config, dataclasses.replace(saved, method="direct")) == [
        "the probe address, port or TLS setting changed",
        "the agent flags changed (none -> --skip-conn)",
        f"the agent version changed (v0.1.0 -> {flow.agent_version_of(config)})",
    ]


def test_the_method_and_version_of_an_install() -> None:
    assert (flow.method_of(config_of()), flow.agent_version_of(config_of())) == ("script", None)
    direct = config_of(method="direct")
    assert (flow.method_of(direct), flow.agent_version_of(direct)) == ("direct", agent.AGENT_V0)


def test_the_version_an_install_pins_is_named_on_a_machine_that_has_no_release(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("platform.machine", lambda: "pdp11")  # `status` and the saved state still name it

    assert flow.agent_version_of(config_of(method="direct")) == agent.AGENT_V0


# --- on_disk_drift: what `status` calls drift -----------------------------------------------------------

def test_nothing_on_disk_is_compared_before_an_install_finished(tmp_path: Path) -> None:
    config = config_of()

    assert flow.on_disk_drift(Paths(tmp_path), None) == []
    assert flow.on_disk_drift(Paths(tmp_path), saved_of(config, installed_at=None)) == []


def test_an_installed_node_without_its_agent_is_drift(tmp_path: Path) -> None:
    assert "the agent unit is gone" in flow.on_disk_drift(Paths(tmp_path), saved_of(config_of()))


def test_the_unit_is_compared_with_the_saved_server_secret_tls_and_flags(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[Any, ...]] = []

    def installed_drift(*args: Any) -> list[str]:
        asked.append(args)
        return ["found"]

    monkeypatch.setattr(agent, "installed_drift", installed_drift)
    paths = Paths(tmp_path)
    saved = saved_of(config_of(), probe_address="2001:db8::1", probe_port=6000, tls=False, agent_flags=("--x",))

    assert flow.on_disk_drift(paths, saved) == ["found"]
    assert asked == [(paths, SECRET, None, "[2001:db8::1]:6000", False, ("--x",))]


# --- the install step as data --------------------------------------------------------------------------

def test_the_install_plan_is_install_sh_unless_the_method_is_direct(tmp_path: Path) -> None:
    paths = Paths(tmp_path)

    script = flow.install_plan(config_of(), paths, SECRET)
    direct = flow.install_plan(config_of(method="direct"), paths, SECRET)

    assert isinstance(script, InstallPlan) and SECRET in script.argv
    assert isinstance(direct, V0Install) and SECRET in direct.argv
    assert direct.release.version == agent.AGENT_V0


def test_install_sh_runs_within_the_deadline_with_its_environment(tmp_path: Path) -> None:
    plan = flow.install_plan(config_of(mirror="cn"), Paths(tmp_path), SECRET)
    assert isinstance(plan, InstallPlan)
    track, confine, environ = tmp_path / "child", tmp_path / "root", {"PATH": "/bin"}

    uninstall, install = flow.install_commands(plan, 42.0, track=track, confine=confine, environ=environ)

    assert install == Command(plan.argv, cwd=plan.cwd, timeout=42.0, error=InstallerFailed, name="install.sh",
                              env=plan.env_set, track=track, confine=confine)
    assert plan.env_set and install.environ is environ
    assert uninstall is None or uninstall.must_succeed is False


def test_the_agent_s_own_service_install_runs_within_the_command_timeout(tmp_path: Path) -> None:
    plan = flow.install_plan(config_of(method="direct"), Paths(tmp_path), SECRET)
    assert isinstance(plan, V0Install)
    plan = dataclasses.replace(plan, uninstall_first=("/opt/nezha/agent/nezha-agent", "service", "uninstall"))
    track, confine, environ = tmp_path / "child", tmp_path / "root", {"PATH": "/bin"}

    uninstall, install = flow.install_commands(plan, 42.0, track=track, confine=confine, environ=environ)

    assert uninstall == Command(plan.uninstall_first, cwd=plan.cwd, must_succeed=False,  # type: ignore[arg-type]
                                name="the uninstall of the agent", track=track, confine=confine)
    assert uninstall is not None and uninstall.environ is environ
    assert install == Command(plan.argv, cwd=plan.cwd, timeout=COMMAND_TIMEOUT, error=InstallerFailed,
                              name="`nezha-agent service install`", env=(), track=track, confine=confine)
    assert install.environ is environ


def test_no_agent_installed_means_no_uninstall(tmp_path: Path) -> None:
    direct = flow.install_plan(config_of(method="direct"), Paths(tmp_path), SECRET)
    assert isinstance(direct, V0Install)
    plan = dataclasses.replace(direct, uninstall_first=None)

    assert flow.install_commands(plan, 42.0)[0] is None


def test_the_install_step_says_what_it_runs(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    direct = flow.install_plan(config_of(method="direct", probe_address="2001:db8::1"), paths, SECRET)
    plain = flow.install_plan(config_of(method="direct", tls=False), paths, SECRET)

    assert flow._install_what(flow.install_plan(config_of(), paths, SECRET)) == "running install.sh install_agent"
    assert flow._install_what(direct) == "nezha-agent service install -s [2001:db8::1]:5555 --tls"
    assert flow._install_what(plain) == "nezha-agent service install -s probe.example.com:5555"


class Seen:
    """An install command that records what it found on disk when it ran."""

    def __init__(self, script: Path) -> None:
        self.script = script
        self.found: dict[str, Any] = {}

    def apply(self, reporter: Reporter) -> None:
        self.found = {"dir": stat.S_IMODE(self.script.parent.stat().st_mode),
                      "file": stat.S_IMODE(self.script.stat().st_mode), "text": self.script.read_bytes()}


SCRIPT = b"#!/bin/sh\nexit 0\n"


def test_install_sh_runs_from_a_private_directory_under_the_root_and_is_removed_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = Paths(tmp_path / "root")
    facts = FACTS.replace(environ={"PATH": "/usr/bin", "LANG": "C"})
    plan = flow.install_plan(config_of(), paths, SECRET)
    assert isinstance(plan, InstallPlan) and plan.script_path.is_relative_to(paths.root)
    seen, asked = Seen(plan.script_path), []

    def commands(*args: Any, **kwargs: Any) -> list[Any]:
        asked.append((args, kwargs))
        return [None, seen]

    monkeypatch.setattr(flow, "install_commands", commands)

    runner(config_of(), paths, facts)._perform(plan, SCRIPT)

    assert seen.found == {"dir": 0o700, "file": 0o700, "text": SCRIPT}
    assert not plan.script_path.parent.exists()
    # the child recorded where a later run finds it, confined to the root, with the node's environment
    assert asked == [((plan, config_of().deadline), {"track": paths.child_file, "confine": paths.root,
                                                      "environ": facts.environ})]
    assert asked[0][1]["environ"] is facts.environ


def test_a_working_directory_that_cannot_be_made_fails_the_install_naming_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = Paths(tmp_path / "root")
    plan = flow.install_plan(config_of(), paths, SECRET)
    plan.cwd.parent.mkdir(parents=True)
    plan.cwd.write_text("a file where the directory goes")
    monkeypatch.setattr(flow, "install_commands", lambda *args, **kwargs: pytest.fail("nothing may run"))

    with pytest.raises(InstallerFailed) as failed:
        runner(config_of(), paths)._perform(plan, SCRIPT)

    assert str(failed.value).startswith(f"cannot create the directory {plan.cwd}: ")


class Unwritable:
    """A staged agent binary whose rename onto the binary's path fails (a read-only /opt)."""

    def commit(self) -> None:
        raise OSError(30, "Read-only file system")


def test_an_agent_binary_that_cannot_be_put_in_place_fails_the_install_naming_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = Paths(tmp_path / "root")
    plan = flow.install_plan(config_of(method="direct"), paths, SECRET)
    monkeypatch.setattr(flow, "Staged", Unwritable)  # the payload's kind, as _perform tells it
    monkeypatch.setattr(flow, "install_commands", lambda *args, **kwargs: pytest.fail("nothing may run"))

    with pytest.raises(InstallerFailed) as failed:
        runner(config_of(method="direct"), paths)._perform(plan, Unwritable())  # type: ignore[arg-type]

    assert str(failed.value) == f"cannot write {paths.agent_binary}: Read-only file system"


def test_install_sh_s_directory_swapped_for_a_link_is_never_made_private_outside_the_root(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths, outside = Paths(tmp_path / "root"), tmp_path / "outside"
    plan = flow.install_plan(config_of(), paths, SECRET)
    assert isinstance(plan, InstallPlan)
    outside.mkdir()
    outside.chmod(0o755)
    plan.script_path.parent.parent.mkdir(parents=True)
    plan.script_path.parent.symlink_to(outside)  # after the paths were resolved under the root
    monkeypatch.setattr(flow, "install_commands", lambda *args, **kwargs: [])

    runner(config_of(), paths)._perform(plan, SCRIPT)

    assert stat.S_IMODE(outside.stat().st_mode) == 0o755
    assert stat.S_IMODE((paths.root / outside.relative_to("/")).stat().st_mode) == 0o700  # the link, taken in the root


def test_install_sh_that_cannot_be_written_fails_the_install_naming_it(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    paths = Paths(tmp_path / "root")
    plan = flow.install_plan(config_of(), paths, SECRET)
    assert isinstance(plan, InstallPlan)
    (plan.script_path / "in-the-way").mkdir(parents=True)  # a directory where the script goes
    monkeypatch.setattr(flow, "install_commands", lambda *args, **kwargs: pytest.fail("nothing may run"))

    with pytest.raises(InstallerFailed) as failed:
        runner(config_of(), paths)._perform(plan, SCRIPT)

    assert str(failed.value).startswith(f"cannot write {plan.script_path}: ")


class Stop(Exception):
    """Raised by a stand-in to end a run where the test has seen what it needs."""


def stop_here(calls: list[tuple[Any, ...]]) -> Any:
    """A stand-in that records its arguments in `calls` and ends the run there."""
    def stand_in(*args: Any) -> Any:
        calls.append(args)
        raise Stop
    return stand_in


@pytest.mark.parametrize("systemd", [True, False])
def test_the_agent_is_watched_where_it_reports_from_the_journal_only_where_systemd_runs(
        systemd: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths, config = Paths(tmp_path / "root"), config_of()
    node = runner(config, paths, FACTS.replace(systemd_running=systemd))
    monkeypatch.setattr(node, "_fetch", lambda plan: SCRIPT)
    asked: list[tuple[Any, ...]] = []
    monkeypatch.setattr(online, "system_sources", stop_here(asked))

    with pytest.raises(Stop):
        node._install(saved_of(config), None)

    [(where, journal, since)] = asked
    assert (where, journal, type(since)) == (paths, systemd, float)


def without_effects(node: flow.Runner, monkeypatch: pytest.MonkeyPatch) -> None:
    """`_install`'s steps that act on the host stood in for: the script fetched, written and run, the unit read."""
    monkeypatch.setattr(node, "_fetch", lambda plan: SCRIPT)
    monkeypatch.setattr(node, "_perform", lambda plan, payload: None)
    monkeypatch.setattr(agent, "verify_v0_unit", lambda plan, paths, secret: None)


@pytest.mark.parametrize("systemd", [True, False])
def test_where_systemd_runs_the_install_waits_for_the_unit_to_be_active(
        systemd: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths, config = Paths(tmp_path / "root"), config_of()
    node = runner(config, paths, FACTS.replace(systemd_running=systemd))
    without_effects(node, monkeypatch)
    asked: list[Any] = []

    def wait_active(is_active: Any) -> None:
        asked.append(is_active)

    def no_wait(*args: Any) -> None:
        raise Stop  # past the verification: the online wait is not this test's

    monkeypatch.setattr(agent, "wait_active", wait_active)
    monkeypatch.setattr(node, "_remove_script_leftovers", no_wait)

    with pytest.raises(Stop):
        node._install(saved_of(config), None)

    assert asked == ([agent.is_active] if systemd else [])


def test_the_agent_s_port_is_watched_with_the_probe_settings_and_the_ca_bundle(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nezha_bootstrap import agentport

    paths = Paths(tmp_path / "root")
    config = config_of(probe_port=6000, tls=True).replace(ca_bundle=tmp_path / "private-ca.pem")
    node = runner(config, paths)
    without_effects(node, monkeypatch)
    monkeypatch.setattr(node, "_remove_script_leftovers", lambda: None)
    monkeypatch.setattr(node, "_presence", lambda saved, before: None)
    watched: list[tuple[Any, ...]] = []
    monkeypatch.setattr(agentport, "watch", stop_here(watched))

    with pytest.raises(Stop):
        node._install(saved_of(config), None)

    assert watched == [("probe.example.com", 6000, True, tmp_path / "private-ca.pem")]


@pytest.mark.parametrize("method", [None, "direct"])
def test_a_download_s_retries_are_said_on_the_run_s_output(method: str | None, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import nezha_bootstrap.v0.script

    def download(*args: Any) -> bytes:
        args[-1 if method is None else -2]("download: HTTP 503, trying again in 1 s")  # its `notify`
        return SCRIPT

    monkeypatch.setattr(nezha_bootstrap.v0.script, "download_script", download)
    monkeypatch.setattr(agent, "fetch_binary", download)
    err = io.StringIO()
    config = config_of(method=method)
    node = flow.Runner(config, FACTS, Paths(tmp_path), Reporter(verbosity=0, out=io.StringIO(), err=err))
    asked: list[tuple[str, ...]] = []
    monkeypatch.setattr(node, "_download_client", asked.append)
    plan = flow.install_plan(config, Paths(tmp_path), SECRET)

    node._fetch(plan)

    lines = err.getvalue().splitlines()
    assert "download: HTTP 503, trying again in 1 s" in lines
    step = f"downloading {plan.script_url}" if isinstance(plan, InstallPlan) else agent.obtaining(plan.release)
    assert f"{step} ..." in lines
    # the client is told what it will fetch: all http, no trust store to load (http.download_context)
    assert asked == ([(plan.script_url,)] if isinstance(plan, InstallPlan) else
                     [(plan.release.checksums_url, plan.release.asset_url)])


def test_a_direct_install_s_binary_that_cannot_be_staged_fails_naming_it(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    paths, config = Paths(tmp_path), config_of(method="direct")

    def no_space(path: Path, mode: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(flow, "Staged", no_space)

    with pytest.raises(InstallerFailed) as failed:
        runner(config, paths)._fetch(flow.install_plan(config, paths, SECRET))

    assert str(failed.value) == f"cannot write {paths.agent_binary}: No space left on device"


def test_a_direct_install_s_binary_that_cannot_be_written_while_downloading_fails_naming_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths, config = Paths(tmp_path), config_of(method="direct")

    def full(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(agent, "fetch_binary", full)
    node = runner(config, paths)
    monkeypatch.setattr(node, "_download_client", lambda urls: None)

    with pytest.raises(InstallerFailed) as failed:
        node._fetch(flow.install_plan(config, paths, SECRET))

    assert str(failed.value) == f"cannot write {paths.agent_binary}: No space left on device"
    assert list(paths.agent_binary.parent.iterdir()) == []  # the partial download discarded


@pytest.mark.parametrize(("method", "secret_given", "saved_given", "recorded", "seen_iid", "instance_id"), [
    (None, None, False, False, None, "i-0saved"), ("direct", "s3cretAgentSecretValue", False, True, "i-0new", "i-0new"),
    (None, None, True, True, "i-0new", "i-0new")])
def test_a_finished_install_records_what_it_installed(method: str | None, secret_given: str | None,
                                                      saved_given: bool, recorded: bool, seen_iid: str | None,
                                                      instance_id: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from nezha_bootstrap import agentport

    paths = Paths(tmp_path / "root")
    config = build(Settings(dashboard_url=URL, token=TOKEN, name="web-1", probe_address="probe.example.com",
                            agent=AgentSettings(method=method, secret=secret_given)), FACTS).config
    node = runner(config, paths, FACTS.replace(instance_id=seen_iid))
    without_effects(node, monkeypatch)
    monkeypatch.setattr(node, "_remove_script_leftovers", lambda: None)
    monkeypatch.setattr(node, "_presence", lambda saved, before: types.SimpleNamespace(server_id=12))
    monkeypatch.setattr(node, "_await_online", lambda saved, sources, presence: None)
    monkeypatch.setattr(agentport, "watch", lambda *args: None)

    node._install(saved_of(config, agent_secret_given=saved_given, agent_version="0.0.1", method="other",
                           instance_id="i-0saved"), None)

    saved = state_mod.load(paths)
    assert saved is not None
    assert (saved.method, saved.agent_version, saved.agent_secret_given, saved.server_id, saved.online) == (
        flow.method_of(config), flow.agent_version_of(config), recorded, 12, True)
    assert (saved.agent_version is None) is (method is None)
    assert saved.instance_id == instance_id  # the one seen now, else the one recorded before


@pytest.mark.parametrize(("secret", "given"), [(None, False), ("s3cretAgentSecretValue", True)])
def test_a_registration_is_saved_at_once_with_what_this_node_was_given(
        secret: str | None, given: bool, tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    config = build(Settings(dashboard_url=URL, token=TOKEN, name="web-1", probe_address="probe.example.com",
                            agent=AgentSettings(secret=secret)), FACTS).config

    saved = runner(config, paths, FACTS.replace(instance_id="i-0abc"))._save_registration("n0deSecretJustRegistered")

    assert state_mod.load(paths) == saved
    assert (saved.secret, saved.name, saved.instance_id, saved.agent_secret_given, saved.installed_at) == (
        "n0deSecretJustRegistered", "web-1", "i-0abc", given, None)


@pytest.mark.parametrize("method", ["direct", None])  # a bundle's default is direct; script is refused with one
def test_a_bundled_v0_agent_is_checked_before_the_dashboard_is_asked(method: str | None, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = object()  # the bundle this tool runs from (bundle.carried()); test_bundle checks real ones
    config = build(Settings(dashboard_url=URL, token=TOKEN, name="web-1", probe_address="probe.example.com",
                            agent=AgentSettings(method=method, bundle=bundle)), FACTS).config  # type: ignore[arg-type]
    checked: list[Any] = []
    monkeypatch.setattr(agent, "check_bundled", checked.append)

    runner(config, Paths(tmp_path))._check_bundled()

    [release] = checked
    assert (release.bundled, release.version) == (bundle, agent.AGENT_V0)


class Ids:
    """A v0 dashboard's id search after a registration: records the time each look was given."""

    def __init__(self, made: set[int] | None, listed: set[int]) -> None:
        self.made, self.listed, self.budgets = made, listed, []  # type: ignore[var-annotated]

    def new_ids_named(self, name: str, tag: str, top: int, before: set[int], seconds: float) -> set[int] | None:
        self.budgets.append(seconds)
        return None if self.made is None else set(self.made)

    def ids_named(self, name: str, tag: str, seconds: float) -> set[int]:
        self.budgets.append(seconds)
        return set(self.listed)


def test_a_search_by_id_that_used_up_the_time_leaves_the_list_a_moment(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(flow, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    ids = Ids(None, {9})
    ids.new_ids_named = lambda *args: now.__setitem__(0, now[0] + 12.0)  # type: ignore[method-assign]

    saved = runner(config_of(), Paths(tmp_path))._record_id(saved_of(config_of()), ids, set(), 8,  # type: ignore[arg-type]
                                                           "AutoRegister")

    assert saved.server_id == 9 and ids.budgets == [0.001]


@pytest.mark.parametrize(("deadline", "budget"), [(300.0, 10.0), (4.0, 4.0)])
def test_the_new_server_s_id_is_looked_for_within_ten_seconds_or_the_deadline(
        deadline: float, budget: float, tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    config = config_of().replace(deadline=deadline)
    ids = Ids(None, {3, 9})  # the search by id did not end: the tag's list, once, in what is left

    saved = runner(config, paths)._record_id(saved_of(config), ids, {3}, 8, "AutoRegister")  # type: ignore[arg-type]

    assert saved.server_id == 9 and state_mod.load(paths) == saved
    first, second = ids.budgets
    assert budget - 0.5 < first <= budget and 0 < second <= first


def test_a_direct_install_s_directory_that_cannot_be_made_fails_naming_it(tmp_path: Path) -> None:
    paths, config = Paths(tmp_path), config_of(method="direct")
    plan = flow.install_plan(config, paths, SECRET)
    plan.cwd.parent.mkdir(parents=True)
    plan.cwd.write_text("a file where the directory goes")

    with pytest.raises(InstallerFailed) as failed:
        runner(config, paths)._fetch(plan)

    assert str(failed.value).startswith(f"cannot create the directory {plan.cwd}: ")


def test_the_dashboard_s_client_trusts_the_ca_bundle_and_knows_its_url_once(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import nezha_bootstrap.http

    config = config_of().replace(ca_bundle=tmp_path / "private-ca.pem")
    made: list[tuple[Any, ...]] = []

    def make_client(*args: Any, **kwargs: Any) -> object:
        made.append((args, kwargs))
        return object()

    monkeypatch.setattr(nezha_bootstrap.http, "make_client", make_client)
    node = runner(config, Paths(tmp_path))

    assert node._http() is node._http()
    assert made == [((tmp_path / "private-ca.pem",), {"urls": (URL,)})]


def test_downloads_trust_the_ca_bundle_and_are_told_their_urls_once(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import nezha_bootstrap.http

    config = config_of().replace(ca_bundle=tmp_path / "private-ca.pem")
    made: list[tuple[Any, ...]] = []

    def make_download_client(*args: Any, **kwargs: Any) -> object:
        made.append((args, kwargs))
        return object()

    monkeypatch.setattr(nezha_bootstrap.http, "make_download_client", make_download_client)
    node = runner(config, Paths(tmp_path))

    first = node._download_client(("https://dash.example.com/install.sh",))

    assert node._download_client(("https://other.example.com/x",)) is first
    assert made == [((tmp_path / "private-ca.pem",), {"urls": ("https://dash.example.com/install.sh",)})]


# --- --dry-run: the request and the registration left under way -----------------------------------------

def test_the_register_request_as_shown_masks_the_token() -> None:
    config = config_of(tag="edge", note="rack 4")

    assert flow.register_request(config) == {
        "method": "POST", "url": f"{URL}/api/v1/server/register?simple=true",
        "headers": {"Authorization": "<token>"},
        "body": {"Name": "web-1", "Tag": "edge", "Note": "rack 4", "HideForGuest": "on"},
    }
    assert TOKEN not in json.dumps(flow.register_request(config))


def test_the_request_lines_list_then_post_then_save_the_secret(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    for config, tag in ((config_of(name="узел"), "AutoRegister"), (config_of(name="узел", tag="edge"), "edge")):
        lines = flow._request_lines(config, paths, flow.register_request(config))

        assert lines == [
            f"GET {URL}/api/v1/server/list?tag={tag} (servers already named like this node)",
            f"POST {URL}/api/v1/server/register?simple=true",
            "  Authorization: <token>",
            "  Content-Type: application/json",
            f"  body: {json.dumps(config.register_body(), ensure_ascii=False)}",
            f"write {paths.state_file} (0600): the node secret",
        ]
        assert "узел" in lines[4]


def pending_of(**changes: Any) -> Pending:
    return dataclasses.replace(Pending(dashboard_url=URL, name="web-1", tag="edge", before=(3,), machine_id=MACHINE,
                                       started_at="2026-01-02T03:04:05+00:00"), **changes)


def test_no_registration_under_way_adds_no_line() -> None:
    assert flow._pending_lines(config_of(), None) == []


def test_a_registration_under_way_with_this_dashboard_is_looked_for_under_its_tag() -> None:
    assert flow._pending_lines(config_of(tag="db"), pending_of(dashboard_url=f"{URL}/")) == [
        f"GET {URL}/api/v1/server/list?tag=edge (the registration of 'web-1' an earlier run left under way at "
        "2026-01-02T03:04:05+00:00: stop if it made a server)"]


def test_a_registration_under_way_with_another_dashboard_is_forgotten() -> None:
    assert flow._pending_lines(config_of(), pending_of(dashboard_url="https://old.example.com", name="db-1")) == [
        "warn about the registration of 'db-1' left under way with https://old.example.com "
        "(2026-01-02T03:04:05+00:00), and forget it"]


@pytest.mark.parametrize(("tag", "shown"), [(None, "AutoRegister"), ("edge", "edge")])
def test_a_damaged_record_is_kept_aside_and_looked_for(tag: str | None, shown: str) -> None:
    assert flow._pending_lines(config_of(tag=tag), "/var/lib/x/pending.json") == [
        f"keep the damaged /var/lib/x/pending.json aside; GET {URL}/api/v1/server/list?tag={shown} "
        "(stop if a server named like this node is there)"]


def test_the_planned_registration_under_way_is_the_pending_record(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    state_mod.save_pending(paths, pending_of())

    for force in (False, True):
        assert flow._planned_pending(paths, None, force) == pending_of()


def test_a_damaged_pending_record_is_planned_by_its_path(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    state_mod.save_pending(paths, pending_of())
    paths.pending_file.write_text("{")

    assert flow._planned_pending(paths, None, False) == str(paths.pending_file)
    assert paths.pending_file.read_text() == "{"  # --dry-run moves nothing


def kept_aside(paths: Paths, name: str, stamp: int) -> Path:
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    path = paths.state_dir / f"{name}.corrupt-{stamp}"
    path.write_text("{")
    return path


class Looked(Exception):
    """The run looked for the server of a damaged record."""


@pytest.mark.parametrize(("registered_at", "looks", "tag"), [
    ("2026-01-01T00:00:00+00:00", True, None), ("2027-06-01T00:00:00+00:00", False, None), (None, True, "web")])
def test_a_registration_looks_for_a_damaged_record_only_if_kept_aside_since_the_last_one(
        registered_at: str | None, looks: bool, tag: str | None, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    paths, config = Paths(tmp_path), config_of(tag=tag)
    damaged = kept_aside(paths, "state.json", 1_800_000_000)  # 2027-01-15
    saved = None if registered_at is None else saved_of(config, registered_at=registered_at)
    node = runner(config, paths)

    def looked(found: list[Path], dashboard: Any, looked_under: str) -> None:
        assert (found, looked_under) == ([damaged], tag or "AutoRegister")  # under the node's own tag
        raise Looked

    def registering(paths: Paths) -> None:  # the room check just before the register request
        raise Stop

    monkeypatch.setattr(node, "_look_for_damaged", looked)
    monkeypatch.setattr(state_mod, "check_room", registering)

    with pytest.raises(Looked if looks else Stop):
        node._register(None, saved)


def test_a_v0_run_names_its_node_dashboard_and_generation_for_a_failure_s_summary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = config_of(dashboard_url="https://dash.example.com:8443/")
    this = ThisNode(config, FACTS, Paths(tmp_path), Reporter(verbosity=-1))
    monkeypatch.setattr(flow.Runner, "run", stop_here([]))

    with pytest.raises(Stop):
        flow.run(this)

    assert {k: this.reporter.context[k] for k in ("name", "dashboard", "generation")} == {
        "name": "web-1", "dashboard": display_url(config.dashboard_url), "generation": "v0"}


def test_a_registration_asked_for_again_leaves_the_old_state_as_it_was(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """--force registers anew: the old registration gets none of a kept node's upkeep (no instance-id recorded
    into it, no warning about it) before the new one replaces it."""
    paths = Paths(tmp_path)
    config = config_of().replace(force=True)
    saved = saved_of(config, instance_id=None)
    state_mod.save(paths, saved)
    err = io.StringIO()
    node = flow.Runner(config, FACTS.replace(instance_id="i-0abc"), paths,
                       Reporter(verbosity=0, out=io.StringIO(), err=err))

    def register(pending: Any, saved: State | None) -> Any:
        raise Stop

    monkeypatch.setattr(node, "_register", register)

    with pytest.raises(Stop):
        node.run()

    assert state_mod.load(paths) == saved and "instance-id" not in err.getvalue()


def test_a_run_that_registers_again_passes_its_last_registration_to_the_damaged_record_look(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths, config = Paths(tmp_path), config_of()
    kept_aside(paths, "state.json", 1_700_000_000)  # 2023: before the last registration
    # registered with another dashboard (no server id to adopt by): this one registers again
    state_mod.save(paths, saved_of(config, dashboard_url="https://old.example.com", server_id=None,
                                   registered_at="2026-01-01T00:00:00+00:00"))
    node = runner(config, paths)

    def looked(found: list[Path], dashboard: Any, tag: str) -> None:
        raise Looked

    def registering(paths: Paths) -> None:
        raise Stop

    monkeypatch.setattr(node, "_look_for_damaged", looked)
    monkeypatch.setattr(state_mod, "check_room", registering)

    with pytest.raises(Stop):  # not Looked: that record is older than the registration the state holds
        node.run()


def test_the_register_request_is_retried_as_register_within_the_deadline(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    config = config_of().replace(deadline=42.0)
    node = runner(config, Paths(tmp_path))
    asked: list[dict[str, Any]] = []

    def with_retries(attempt: Any, **how: Any) -> None:
        asked.append(how)
        raise Stop

    monkeypatch.setattr(flow, "with_retries", with_retries)

    with pytest.raises(Stop):
        node._register(None, None)

    [how] = asked
    assert (how["deadline"], how["what"], how["give_up"]) == (42.0, "register", DashboardUnreachable)
    assert how["notify"] == node.reporter.info  # each retry said on the run's output


class Registered:
    """A registration beside a server of the same name (id 3): the secret kept, the ids before it known."""

    def __init__(self, dashboard: Any, body: dict[str, str], tag: str, keep: Any, guard: Any, pending: Any) -> None:
        self.keep = keep
        self.before: set[int] | None = None
        self.top = 0

    def attempt(self, seconds_left: float) -> str:
        self.before, self.top = {4, 3}, 7
        self.keep("n0deSecretJustRegistered")
        return "n0deSecretJustRegistered"


def test_a_registration_beside_a_same_named_server_looks_for_its_id_past_that_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nezha_bootstrap.v0.api

    monkeypatch.setattr(nezha_bootstrap.v0.api, "Registration", Registered)
    err = io.StringIO()
    node = flow.Runner(config_of(), FACTS, Paths(tmp_path), Reporter(verbosity=0, out=io.StringIO(), err=err))
    looked: list[tuple[Any, ...]] = []

    def record_id(saved: State, dashboard: Any, before: set[int], top: int, tag: str) -> State:
        looked.append((before, top, tag))
        return saved

    monkeypatch.setattr(node, "_record_id", record_id)

    saved, before = node._register(None, None)

    assert (saved.secret, before, looked) == ("n0deSecretJustRegistered", {3, 4}, [({3, 4}, 7, "AutoRegister")])
    assert ("warning: the dashboard already had a server named 'web-1' under tag 'AutoRegister' (id 3, 4); this one "
            "is registered beside it: give nodes distinct names (NODE_NAME with {ip} or {machine_id}), or delete the "
            "old one if its machine is gone") in err.getvalue().splitlines()


def test_a_run_closes_the_clients_it_made_and_never_one_it_was_given(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    node = runner(config_of(), Paths(tmp_path))
    given, made = httpx.Client(), httpx.Client()
    node.client = given

    def run() -> Any:
        node.downloads = made  # made on the way (a download)
        raise Stop

    monkeypatch.setattr(node, "_run", run)

    with pytest.raises(Stop):
        node.run()

    assert (given.is_closed, made.is_closed, node.client, node.downloads) == (False, True, given, None)
    given.close()


def test_the_latest_damaged_record_since_the_registration_is_planned(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    older = kept_aside(paths, "state.json", 1_700_000_000)
    latest = kept_aside(paths, "state.json", 1_800_000_000)
    saved = saved_of(config_of(), registered_at="2026-01-01T00:00:00+00:00")  # between the two

    assert flow._planned_pending(paths, None, False) == str(latest)
    assert flow._planned_pending(paths, saved, False) == str(latest)
    assert flow._planned_pending(paths, dataclasses.replace(saved, registered_at="2027-06-01T00:00:00+00:00"),
                                 False) is None
    assert older.exists()


def test_force_plans_no_look_for_a_damaged_record(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    kept_aside(paths, "state.json", 1_800_000_000)

    assert flow._planned_pending(paths, None, True) is None


def test_nothing_under_way_plans_nothing(tmp_path: Path) -> None:
    assert flow._planned_pending(Paths(tmp_path), None, False) is None
    os.mkdir(tmp_path / "elsewhere")
    assert flow._planned_pending(Paths(tmp_path / "elsewhere"), None, True) is None


# --- dry_run: the plan, from the saved state, touching nothing --------------------------------------------

def dry_run(config: Config, paths: Paths, facts: Facts = FACTS) -> Any:
    return flow.dry_run(ThisNode(config, facts, paths, Reporter(verbosity=-1)))


def test_a_dry_run_of_a_new_node_plans_the_request_and_the_install(tmp_path: Path) -> None:
    paths, config = Paths(tmp_path), config_of(tag="edge")

    result = dry_run(config, paths)

    assert (result.outcome, result.generation, result.dashboard, result.method, result.reason, result.name) == (
        "dry_run", "v0", URL, "script", "no saved state: this node was never registered", "web-1")
    assert result.details["action"] == "register"
    assert result.details["request"] == flow.register_request(config)
    described = flow.install_plan(config, paths, "0" * 18).describe()
    assert result.details["install"] == described
    assert list(result.plan) == [
        "plan: register and install (no saved state: this node was never registered)",
        *flow._request_lines(config, paths, flow.register_request(config)),
        *described, f"write {paths.state_file} (0600): installed",
    ]
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def agent_as_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent on disk is as the last install left it (agent.installed_drift finds nothing)."""
    monkeypatch.setattr(agent, "installed_drift", lambda *args: [])


def test_a_dry_run_of_a_finished_node_plans_nothing(tmp_path: Path, agent_as_installed: None) -> None:
    paths, config = Paths(tmp_path), config_of(method="direct")
    state_mod.save(paths, saved_of(config, name="old-name"))

    result = dry_run(config, paths)

    assert (result.reason, result.method, result.details) == ("registered and installed", "direct",
                                                              {"action": "nothing"})
    assert list(result.plan) == ["plan: nothing to do (registered and installed)",
                                 f"note: {NAME_NOTE.format(tag=None)}"]


def test_a_dry_run_of_an_unfinished_install_plans_the_install_only(tmp_path: Path) -> None:
    paths, config = Paths(tmp_path), config_of()
    state_mod.save(paths, saved_of(config, installed_at=None))
    state_mod.save_pending(paths, pending_of())  # a registration left under way is for a run that registers

    result = dry_run(config, paths)

    assert result.details["action"] == "install" and "request" not in result.details
    assert result.plan[0] == "plan: install only (registered earlier, the install did not finish)"
    assert not any("GET" in line or "POST" in line for line in result.plan)
    assert result.plan[-1] == f"write {paths.state_file} (0600): installed"


def test_a_dry_run_under_another_url_plans_the_lookup_then_the_registration(tmp_path: Path) -> None:
    paths, config = Paths(tmp_path), config_of()
    state_mod.save(paths, saved_of(config, dashboard_url="https://old.example.com", server_id=7, name="db-1"))

    result = dry_run(config, paths)

    assert result.details["action"] == "register" and result.details["request"] == flow.register_request(config)
    assert list(result.plan[:2]) == [
        "plan: look for the registered server under this URL, else register (registered as server 7 with "
        "https://old.example.com, maybe the same dashboard)",
        f"GET {URL}/api/v1/server/list?tag=AutoRegister: if it lists server 7 named 'db-1', keep it; else:",
    ]
    assert result.plan[2] == flow._request_lines(config, paths, flow.register_request(config))[0]
    state_mod.save(paths, saved_of(config, dashboard_url="https://old.example.com", server_id=7, tag="edge"))
    assert f"GET {URL}/api/v1/server/list?tag=edge: if it lists server 7 named 'web-1', keep it; else:" in (
        dry_run(config_of(tag="edge"), paths).plan)


def test_a_dry_run_plans_the_lookup_of_a_registration_left_under_way_first(tmp_path: Path) -> None:
    paths, config = Paths(tmp_path), config_of()
    state_mod.save_pending(paths, pending_of())

    plan = dry_run(config, paths).plan

    assert plan[1] == flow._pending_lines(config, pending_of())[0]
    assert plan[2] == flow._request_lines(config, paths, flow.register_request(config))[0]


def test_a_dry_run_after_a_damaged_record_since_the_registration_plans_its_lookup(tmp_path: Path) -> None:
    paths, config = Paths(tmp_path), config_of()
    state_mod.save(paths, saved_of(config, machine_id="f" * 32, registered_at="2026-01-01T00:00:00+00:00"))
    damaged = kept_aside(paths, "state.json", 1_800_000_000)  # after the registration

    assert dry_run(config, paths).plan[1] == flow._pending_lines(config, str(damaged))[0]
    forced = dry_run(config_of(force=True), paths).plan
    assert not any("keep the damaged" in line for line in forced)
    state_mod.save(paths, saved_of(config, machine_id="f" * 32, registered_at="2027-06-01T00:00:00+00:00"))
    assert not any("keep the damaged" in line for line in dry_run(config, paths).plan)


def test_a_dry_run_compares_the_agent_on_disk(tmp_path: Path) -> None:
    paths, config = Paths(tmp_path), config_of()
    state_mod.save(paths, saved_of(config))

    assert dry_run(config, paths).plan[0] == (
        f"plan: install only (the agent binary {paths.agent_binary} is gone; the agent unit is gone)")


# --- Runner._settle: the local upkeep of a registered node --------------------------------------------

def runner(config: Config, paths: Paths, facts: Facts = FACTS) -> flow.Runner:
    return flow.Runner(config, facts, paths, Reporter(verbosity=-1))


class TagList:
    """A v0 dashboard's list API for the online wait: `servers` under any tag, or a refused token."""

    def __init__(self, servers: list[dict[str, Any]] | None) -> None:
        self.servers, self.tags = servers, []  # type: ignore[var-annotated]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.tags.append(request.url.params.get("tag"))
        if self.servers is None:
            return httpx.Response(200, json={"code": 403, "message": "token wrong"})  # v0.20.13's refusal
        return httpx.Response(200, json={"code": 0, "message": "success", "result": self.servers})


def presence_of(config: Config, saved: State, dashboard: TagList, tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch) -> tuple[Any, io.StringIO]:
    err = io.StringIO()
    node = flow.Runner(config, FACTS, Paths(tmp_path), Reporter(verbosity=0, out=io.StringIO(), err=err))
    monkeypatch.setattr(node, "_http", lambda: make_client(transport=httpx.MockTransport(dashboard)))
    return node._presence(saved, before={3}), err


@pytest.mark.parametrize(("tag", "listed"), [(None, "AutoRegister"), ("web", "web")])
def test_the_online_wait_finds_a_new_server_by_the_nodes_name_under_its_own_tag(
        tag: str | None, listed: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = config_of(tag=tag)
    dashboard = TagList([{"id": 3, "name": "web-1", "last_active": 5}, {"id": 4, "name": "web-2", "last_active": 7},
                         {"id": 5, "name": "web-1", "last_active": 9}])

    presence, _ = presence_of(config, saved_of(config, server_id=None), dashboard, tmp_path, monkeypatch)
    look = presence.look()

    assert (look.outcome, look.evidence) == (Outcome.ONLINE, "server id 5 reported (last_active 9)")
    assert dashboard.tags == [listed]


def test_a_refused_list_in_the_online_wait_is_warned_naming_where_the_token_came_from(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = config_of(token_source="--token-file /etc/nezha.token")

    presence, err = presence_of(config, saved_of(config, server_id=None), TagList(None), tmp_path, monkeypatch)
    look = presence.look()

    assert look.outcome is None and presence.usable is False
    assert "Check the token in --token-file /etc/nezha.token:" in err.getvalue()


class Refusing:
    """A source that gives a verdict at its first look: the agent's secret is refused."""

    name = "the agent's log"

    def look(self) -> Look:
        return Look(Outcome.SECRET_REFUSED, "the dashboard refused the agent's secret")


@pytest.mark.parametrize(("found", "saved_id", "kept"), [(7, None, 7), (None, 5, 5), (7, 5, 7)])
def test_a_verdict_saves_the_node_not_online_with_the_server_id_the_wait_found_or_had(
        found: int | None, saved_id: int | None, kept: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths, config = Paths(tmp_path), config_of()
    saved = saved_of(config, server_id=saved_id, online=True, online_at="2026-01-02T03:04:10+00:00")
    state_mod.save(paths, saved)
    node = runner(config, paths)
    monkeypatch.setattr(node, "_stop_agent", lambda: None)
    presence = types.SimpleNamespace(server_id=found)

    with pytest.raises(NotOnline):
        node._await_online(saved, [Refusing()], presence)  # type: ignore[arg-type]

    after = state_mod.load(paths)
    assert after is not None
    assert (after.online, after.online_at, after.server_id) == (False, None, kept)
    assert after.installed_at == saved.installed_at and after.secret == SECRET


def leftovers_in(paths: Paths) -> tuple[Path, Path]:
    paths.agent_dir.mkdir(parents=True)
    return paths.agent_dir / "nezha-agent_linux_amd64.zip", paths.agent_dir / "README.md"


def test_install_shs_leftover_zip_and_readme_are_removed_and_said(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    zipped, readme = leftovers_in(paths)
    zipped.write_bytes(b"PK"), readme.write_text("agent\n")
    err = io.StringIO()

    flow.Runner(config_of(), FACTS, paths, Reporter(verbosity=1, out=io.StringIO(), err=err))._remove_script_leftovers()

    assert not zipped.exists() and not readme.exists()
    assert f"removed install.sh's leftover {readme}" in err.getvalue()


def test_a_leftover_that_is_a_link_or_a_directory_is_left_as_it_is(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    zipped, readme = leftovers_in(paths)
    outside = tmp_path / "elsewhere.zip"
    outside.write_bytes(b"PK")
    zipped.symlink_to(outside)
    readme.mkdir()

    runner(config_of(), paths)._remove_script_leftovers()

    assert zipped.is_symlink() and outside.exists() and readme.is_dir()


def test_a_leftover_that_cannot_be_removed_fails_the_install_naming_it(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    paths = Paths(tmp_path)
    _, readme = leftovers_in(paths)
    readme.write_text("agent\n")

    def refuse(self: Path, missing_ok: bool = False) -> None:
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(Path, "unlink", refuse)

    with pytest.raises(InstallerFailed) as failed:
        runner(config_of(), paths)._remove_script_leftovers()
    assert str(failed.value) == f"cannot remove install.sh's leftover {readme}: Permission denied"


def test_a_registration_recorded_in_the_second_the_secret_was_saved_is_forgotten(tmp_path: Path) -> None:
    paths, config = Paths(tmp_path), config_of()
    saved = saved_of(config)
    assert saved.registered_at is not None
    for started, kept in ((saved.registered_at, False), ("2026-01-02T03:04:06+00:00", True)):
        state_mod.save_pending(paths, pending_of(started_at=started))

        runner(config, paths)._settle(saved, state_mod.load_pending(paths))

        assert paths.pending_file.exists() is kept, started
    state_mod.clear_pending(paths)


def test_a_registration_left_under_way_before_any_saved_registration_is_kept(tmp_path: Path) -> None:
    paths, config = Paths(tmp_path), config_of()
    state_mod.save_pending(paths, pending_of())

    runner(config, paths)._settle(saved_of(config, registered_at=None), state_mod.load_pending(paths))

    assert paths.pending_file.exists()


def test_an_agent_secret_beside_a_v0_state_is_recorded_once_and_its_absence_never(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    plain = config_of()
    state_mod.save(paths, saved_of(plain))

    runner(plain, paths)._settle(saved_of(plain), None)
    assert state_mod.load(paths) == saved_of(plain)  # nothing to record: no agent secret

    given = build(Settings(dashboard_url=URL, token=TOKEN, name="web-1", probe_address="probe.example.com",
                           agent=AgentSettings(secret="s3cretAgent42")), FACTS).config
    runner(given, paths)._settle(saved_of(plain), None)
    assert state_mod.load(paths) == saved_of(plain, agent_secret_given=True)


def test_an_instance_id_seen_first_now_is_recorded_with_one_warning(tmp_path: Path) -> None:
    paths, config = Paths(tmp_path), config_of()
    facts = FACTS.replace(instance_id="i-0abc")
    state_mod.save(paths, saved_of(config))
    settle = runner(config, paths, facts)

    settle._settle(saved_of(config), None)

    assert state_mod.load(paths) == saved_of(config, instance_id="i-0abc")
    assert settle.reporter.warnings == [identity.recorded_late_note("i-0abc")]
    settle._settle(saved_of(config, instance_id="i-0abc"), None)
    assert len(settle.reporter.warnings) == 1


# --- Runner: looking for the server an earlier run may have made, recording the new one's id -------------

class Listing:
    """A dashboard's server list, answer by answer (an exception is raised), recording what was asked."""

    def __init__(self, *answers: set[int] | Exception, new: set[int] | None | Exception = None) -> None:
        self.answers = list(answers)
        self.new = new  # what reading by id above the list's highest id finds (None: it did not end)
        self.asked: list[tuple[str, str]] = []
        self.read_above: list[tuple[str, str, int, set[int]]] = []

    def new_ids_named(self, name: str, tag: str, above: int, before: set[int], seconds_left: float) -> set[int] | None:
        self.read_above.append((name, tag, above, set(before)))
        if isinstance(self.new, Exception):
            raise self.new
        return None if self.new is None else set(self.new)

    def ids_named(self, name: str, tag: str, seconds_left: float) -> set[int]:
        self.asked.append((name, tag))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return set(answer)


def test_a_registration_left_under_way_with_another_dashboard_is_forgotten_with_a_warning(tmp_path: Path) -> None:
    paths, config = Paths(tmp_path), config_of()
    state_mod.save_pending(paths, pending_of(dashboard_url="https://old.example.com", name="db-1"))
    looking, listing = runner(config, paths), Listing(set())

    looking._look_for(pending_of(dashboard_url="https://old.example.com", name="db-1"), listing)  # type: ignore[arg-type]

    assert listing.asked == [] and not paths.pending_file.exists()
    assert looking.reporter.warnings == [
        "an earlier run was stopped while registering 'db-1' with https://old.example.com (2026-01-02T03:04:05+00:00); "
        "if a server of that name that never connected is there, delete it"]


def test_a_registration_left_under_way_that_made_no_server_lets_the_run_register(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    listing = Listing({3})  # the server named so before the killed run's POST: not its
    looking = runner(config_of(tag="db"), paths)
    looking.reporter.verbosity, looking.reporter.err = 0, io.StringIO()

    looking._look_for(pending_of(name="db-1"), listing)  # type: ignore[arg-type]

    assert listing.asked == [("db-1", "edge")]  # the name and tag of the registration left under way
    assert looking.reporter.err.getvalue() == (
        "an earlier run was stopped while registering 'db-1' (2026-01-02T03:04:05+00:00): looking for the server "
        "it may have made\n")


def test_a_server_made_by_a_registration_left_under_way_stops_the_run(tmp_path: Path) -> None:
    listing = Listing({3, 12, 9})

    with pytest.raises(DashboardRefused) as refused:
        runner(config_of(), Paths(tmp_path))._look_for(pending_of(), listing)  # type: ignore[arg-type]

    assert str(refused.value) == (
        "register: an earlier run was stopped while registering 'web-1' under tag 'edge' (2026-01-02T03:04:05+00:00), "
        "and the dashboard now has a new server so named (id 9, 12), whose secret never arrived. Not registering "
        "again: delete that server in the dashboard, then run again")


def test_a_damaged_record_and_a_server_so_named_stop_the_run(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    damaged = [kept_aside(paths, "pending.json", 1_700_000_000), kept_aside(paths, "state.json", 1_800_000_000)]
    listing = Listing({12, 9})

    with pytest.raises(DashboardRefused) as refused:
        runner(config_of(), paths)._look_for_damaged(damaged, listing, "edge")  # type: ignore[arg-type]

    assert listing.asked == [("web-1", "edge")]
    assert str(refused.value) == (
        f"register: this node's saved state was damaged (kept aside as {damaged[-1]}), and the dashboard has a "
        "server named 'web-1' under tag 'edge' (id 9, 12), probably this node's, whose secret was in that file. "
        "Not registering again: delete that server in the dashboard (or give this node another name), then run "
        "again; --force registers beside it")


def test_a_damaged_record_without_a_server_so_named_lets_the_run_register(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    damaged = [kept_aside(paths, "state.json", 1_800_000_000)]
    looking = runner(config_of(), paths)
    looking.reporter.verbosity = 0
    looking.reporter.err = io.StringIO()

    looking._look_for_damaged(damaged, Listing(set()), "AutoRegister")  # type: ignore[arg-type]

    assert looking.reporter.err.getvalue() == (
        f"{damaged[0]} was kept aside as damaged: looking for a server named 'web-1' under tag 'AutoRegister' "
        "before registering\n")


LOOKUPS = {
    "pending": lambda looking, listing: looking._look_for(pending_of(), listing),
    "damaged": lambda looking, listing: looking._look_for_damaged([Path("/x/state.json.corrupt-1")], listing, "t"),
    "adopt": lambda looking, listing: looking._adopt(saved_of(config_of(), dashboard_url="https://old.example.com",
                                                              server_id=7)),
}


@pytest.fixture
def listing_for_adopt(monkeypatch: pytest.MonkeyPatch) -> list[Listing]:
    """v0.api.Dashboard as _adopt makes it: the next Listing; its arguments recorded on the Listing."""
    from nezha_bootstrap.v0 import api

    made: list[Listing] = []

    def dashboard(client: Any, url: str, token: str, source: str) -> Listing:
        made[-1].made_with = (url, token, source)  # type: ignore[attr-defined]
        return made[-1]

    monkeypatch.setattr(api, "Dashboard", dashboard)
    return made


@pytest.mark.parametrize("lookup", list(LOOKUPS))
def test_a_server_list_that_fails_once_is_asked_again_saying_so(
        tmp_path: Path, lookup: str, listing_for_adopt: list[Listing]) -> None:
    looking = runner(config_of(deadline="30"), Paths(tmp_path))
    looking.reporter.verbosity, looking.reporter.err = 0, io.StringIO()
    listing = Listing(Transient("the dashboard answered 503"), {3} if lookup == "pending" else set())
    listing_for_adopt.append(listing)

    LOOKUPS[lookup](looking, listing)

    assert len(listing.asked) == 2
    said = looking.reporter.err.getvalue()
    assert re.search(r"^server list: the dashboard answered 503; retrying in \d+\.\d s$", said, re.M), said


@pytest.mark.parametrize("lookup", list(LOOKUPS))
def test_a_server_list_that_stays_down_is_unreachable_at_the_deadline(
        tmp_path: Path, lookup: str, listing_for_adopt: list[Listing]) -> None:
    listing = Listing(Transient("the dashboard answered 503"))
    listing_for_adopt.append(listing)

    with pytest.raises(DashboardUnreachable, match=r"^server list: the dashboard answered 503; gave up after "):
        LOOKUPS[lookup](runner(config_of(deadline="1"), Paths(tmp_path)), listing)


def test_adopting_asks_the_dashboard_of_this_run_for_the_saved_name_and_tag(
        tmp_path: Path, listing_for_adopt: list[Listing], agent_as_installed: None) -> None:
    paths, config = Paths(tmp_path), config_of(token_source="--token-file /etc/token")
    for tag, asked in ((None, "AutoRegister"), ("edge", "edge")):
        saved = saved_of(config, dashboard_url="https://old.example.com", server_id=7, name="db-1", tag=tag)
        listing_for_adopt.append(Listing({7}))

        runner(config, paths)._adopt(saved)

        assert listing_for_adopt[-1].asked == [("db-1", asked)]
        assert listing_for_adopt[-1].made_with == (URL, TOKEN, "--token-file /etc/token")  # type: ignore[attr-defined]


def test_a_dashboard_listing_the_saved_server_is_the_same_one_kept_under_this_url(
        tmp_path: Path, listing_for_adopt: list[Listing], agent_as_installed: None) -> None:
    paths, config = Paths(tmp_path), config_of()
    saved = saved_of(config, dashboard_url="https://old.example.com", server_id=7, tls=False)
    state_mod.save(paths, saved)
    listing_for_adopt.append(Listing({5, 7}))
    adopting = runner(config, paths)
    adopting.reporter.verbosity, adopting.reporter.err = 0, io.StringIO()

    kept, again = adopting._adopt(saved)

    assert kept == state_mod.load(paths) == dataclasses.replace(saved, dashboard_url=URL)
    assert again == Decision(Action.INSTALL, "the probe address, port or TLS setting changed")
    assert adopting.reporter.err.getvalue().splitlines() == [
        f"{URL} lists this node's server 7 ('web-1', tag 'AutoRegister'): the same dashboard as "
        "https://old.example.com; kept, not registered again",
        "plan: install only (the probe address, port or TLS setting changed)",
    ]


def test_a_dashboard_without_the_saved_server_is_registered_with(
        tmp_path: Path, listing_for_adopt: list[Listing]) -> None:
    paths, config = Paths(tmp_path), config_of()
    saved = saved_of(config, dashboard_url="https://old.example.com", server_id=7)
    state_mod.save(paths, saved)
    listing_for_adopt.append(Listing({5}))

    kept, instead = runner(config, paths)._adopt(saved)

    assert kept == state_mod.load(paths) == saved
    assert instead == Decision(Action.REGISTER, "registered with another dashboard (https://old.example.com); "
                                                "this one has no server 7 named 'web-1'")


@pytest.mark.parametrize(("new", "recorded"), [({8}, 8), ({8, 9}, None), (set(), None)])
def test_the_new_server_s_id_is_recorded_when_reading_above_the_list_finds_exactly_one(
        tmp_path: Path, new: set[int], recorded: int | None) -> None:
    paths, config = Paths(tmp_path), config_of(tag="edge")
    saved = saved_of(config, installed_at=None)
    state_mod.save(paths, saved)
    listing = Listing(set(), new=new)

    kept = runner(config, paths)._record_id(saved, listing, {3}, 7, "edge")  # type: ignore[arg-type]

    assert kept == state_mod.load(paths) == dataclasses.replace(saved, server_id=recorded)
    assert listing.read_above == [("web-1", "edge", 7, {3})]
    assert listing.asked == []  # the tag is not listed a second time


@pytest.mark.parametrize(("listed", "recorded"), [({3, 8}, 8), ({3, 8, 9}, None), ({3}, None)])
def test_when_reading_above_the_list_does_not_end_the_tag_is_listed_again(
        tmp_path: Path, listed: set[int], recorded: int | None) -> None:
    paths, config = Paths(tmp_path), config_of(tag="edge")
    saved = saved_of(config, installed_at=None)
    state_mod.save(paths, saved)
    listing = Listing(listed, new=None)

    kept = runner(config, paths)._record_id(saved, listing, {3}, 7, "edge")  # type: ignore[arg-type]

    assert kept == state_mod.load(paths) == dataclasses.replace(saved, server_id=recorded)
    assert listing.asked == [("web-1", "edge")]


@pytest.mark.parametrize("failure", [Transient("503"), DashboardRefused("403"), DashboardUnreachable("down")])
@pytest.mark.parametrize("where", ["reading by id", "listing again"])
def test_the_new_server_s_id_is_best_effort(tmp_path: Path, failure: Exception, where: str) -> None:
    paths, config = Paths(tmp_path), config_of()
    saved = saved_of(config, installed_at=None)
    state_mod.save(paths, saved)
    listing = Listing(failure, new=failure) if where == "reading by id" else Listing(failure, new=None)

    kept = runner(config, paths)._record_id(saved, listing, set(), 0, "AutoRegister")  # type: ignore[arg-type]

    assert kept == state_mod.load(paths) == saved


def test_an_adopted_server_s_agent_is_compared_on_disk_again(tmp_path: Path, listing_for_adopt: list[Listing]) -> None:
    paths, config = Paths(tmp_path), config_of()
    saved = saved_of(config, dashboard_url="https://old.example.com", server_id=7)
    listing_for_adopt.append(Listing({7}))

    _, again = runner(config, paths)._adopt(saved)

    assert again == Decision(Action.INSTALL, f"the agent binary {paths.agent_binary} is gone; the agent unit is gone")


# --- the run as a new process would make it: nothing registered for redaction but what this run knows --------

@pytest.mark.integration
@pytest.mark.parametrize("first", [{"NEZHA_STUB_MODE": "exit1"}, {}], ids=["unfinished", "finished"])
def test_a_resumed_run_masks_the_saved_secret_it_did_not_receive(cli: Cli, first: dict[str, str]) -> None:
    shebang, rest = cli.fake.files["/install.sh"].split(b"\n", 1)
    cli.fake.files["/install.sh"] = shebang + b'\necho "secret: ${4:-}" >&2\n' + rest  # the 4th argument
    cli("run", **first)
    [server] = cli.fake.servers
    redact.forget_all()  # as in a new process: only the state file knows the secret now
    (cli.root / "etc/systemd/system/nezha-agent.service").unlink(missing_ok=True)  # so the rerun installs

    outcome = cli("run", "-v")

    assert outcome.exit_code == 0, outcome.stderr
    assert "plan: install only" in outcome.stderr and len(cli.fake.registrations()) == 1
    assert "secret: ***" in outcome.stderr and server.secret not in outcome.stdout + outcome.stderr
    assert leak_scan(cli) == []


@pytest.mark.integration
def test_a_run_closes_the_http_clients_it_made(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    from nezha_bootstrap import http

    made: list[Any] = []

    def recorded(maker: Any) -> Any:
        def making(*args: Any, **kwargs: Any) -> Any:
            made.append(maker(*args, **kwargs))
            return made[-1]
        return making

    monkeypatch.setattr(http, "make_client", recorded(http.make_client))
    monkeypatch.setattr(http, "make_download_client", recorded(http.make_download_client))

    assert cli("run").exit_code == 0

    assert len(made) >= 2 and all(client.is_closed for client in made)  # the dashboard's and the downloads'


def test_stopping_the_agent_is_its_own_service_stop_in_its_directory_whatever_it_answers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    applied: list[Command] = []
    monkeypatch.setattr(Command, "apply", lambda command, reporter: applied.append(command))
    paths = Paths(tmp_path)
    facts = FACTS.replace(environ={"PATH": "/usr/bin"})
    stopping = runner(config_of(), paths, facts)
    stopping.reporter.verbosity, stopping.reporter.err = 0, io.StringIO()

    stopping._stop_agent()

    assert applied == [Command((str(paths.agent_binary), "service", "stop"), cwd=paths.agent_dir, must_succeed=False,
                               name="`nezha-agent service stop`", track=paths.child_file)]
    assert applied[0].environ is facts.environ
    assert stopping.reporter.err.getvalue() == "stopping the agent: nezha-agent service stop\n"


@pytest.mark.integration
def test_the_new_secret_is_saved_while_stop_signals_are_held(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    from nezha_bootstrap import interrupts

    state = cli.root / "var/lib/nezha-bootstrap/state.json"
    held: list[tuple[bool, bool]] = []  # whether the state file existed as the hold began, and as it ended
    deferred = interrupts.deferred

    @contextlib.contextmanager
    def holding() -> Iterator[None]:
        before = state.exists()
        with deferred():
            yield
        held.append((before, state.exists()))

    monkeypatch.setattr(interrupts, "deferred", holding)

    assert cli("run").exit_code == 0

    assert held == [(False, True)]


STEP = re.compile(r"^(?:(?P<what>\S.*) \.\.\.|  (?P<name>\w+): done in \d+\.\d\d s)$")


def steps_said(stderr: str) -> list[str]:
    """The progress lines of each step: what it does, then its name as it ends (durations left out)."""
    said = [STEP.match(line) for line in stderr.splitlines()]
    return [match["what"] or match["name"] for match in said if match]


@pytest.mark.integration
def test_each_step_says_what_it_does_and_ends_under_its_name(cli: Cli) -> None:
    first = cli("run", NODE_NAME="web-1")
    unit = cli.root / "etc/systemd/system/nezha-agent.service"
    online = "waiting for the dashboard to see the node online (up to 60 s; the agent connects to probe.example.test"

    assert steps_said(first.stderr) == [
        f"registering 'web-1' with {cli.dashboard.url}", "register",
        f"downloading {cli.dashboard.url}/install.sh", "download",
        "running install.sh install_agent", "install",
        f"verifying {unit}", "verify",
        f"{online}:5555 with TLS)", "online",
    ]
    again = cli("run", "--json", NODE_NAME="web-1", NEZHA_PROBE_PORT="6000")
    assert [step["step"] for step in json.loads(again.stdout)["steps"]] == ["download", "install", "verify", "online"]
    assert steps_said(again.stderr)[-2:] == [f"{online}:6000 with TLS)", "online"]


def test_a_secret_that_cannot_be_saved_says_the_server_is_made_and_keeps_the_pending_record(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths, config = Paths(tmp_path), config_of()
    state_mod.save_pending(paths, pending_of())

    def full(*args: Any) -> None:
        raise StateError("cannot write the state: no space left on device")

    monkeypatch.setattr(state_mod, "save", full)

    with pytest.raises(StateError) as failed:
        runner(config, paths)._save_registration(SECRET)

    assert str(failed.value) == (
        "cannot write the state: no space left on device. The dashboard made the server 'web-1', whose secret is "
        "lost now: delete it in the dashboard, fix the state directory, then run again")
    assert paths.pending_file.exists()
    assert SECRET not in str(failed.value)


def test_a_new_secret_is_saved_at_once_with_what_was_registered(tmp_path: Path) -> None:
    paths, config = Paths(tmp_path), config_of(tag="edge", probe_port="6000", tls=False)
    facts = FACTS.replace(instance_id="i-0abc")
    state_mod.save_pending(paths, pending_of())

    kept = runner(config, paths, facts)._save_registration(SECRET)

    assert kept == state_mod.load(paths)
    assert kept.registered_at is not None and TIMESTAMP.match(kept.registered_at)
    assert dataclasses.replace(kept, registered_at=None) == State(
        dashboard_url=URL, name="web-1", tag="edge", probe_address="probe.example.com", probe_port=6000, tls=False,
        secret=SECRET, machine_id=MACHINE, instance_id="i-0abc", agent_secret_given=False)
    assert not paths.pending_file.exists()
    assert redact.redact(f"x {SECRET} y") == "x *** y"


@pytest.mark.integration
def test_the_result_of_each_kind_of_run_reads_back_in_json(cli: Cli) -> None:
    def result(*args: str, **env: str) -> dict[str, Any]:
        outcome = cli("run", "--json", *args, NODE_NAME="web-1", **env)
        assert outcome.exit_code == 0, outcome.stderr
        shown = dict(json.loads(outcome.stdout))
        assert {key: shown[key] for key in ("generation", "dashboard", "method", "name", "exit_code")} == {
            "generation": "v0", "dashboard": cli.dashboard.url, "method": "script", "name": "web-1", "exit_code": 0}
        return shown

    first = result()
    assert (first["outcome"], first["reason"], first["online"]) == (
        "registered_and_installed", "no saved state: this node was never registered", True)
    assert isinstance(first["online_after_s"], float) and first["online_after_s"] >= 0

    again = result()
    assert (again["outcome"], again["reason"], again["online"], again.get("online_after_s")) == (
        "nothing_to_do", "registered and installed", True, None)

    moved = result(NEZHA_PROBE_PORT="6000")
    assert (moved["outcome"], moved["reason"], moved["online"]) == (
        "installed", "the probe address, port or TLS setting changed", True)
    assert isinstance(moved["online_after_s"], float) and moved["online_after_s"] >= 0
