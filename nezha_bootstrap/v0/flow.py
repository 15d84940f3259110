"""The v0 `run`: decide from config and saved state (pure), then register and install (the edge)."""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from nezha_bootstrap import agentport, identity, interrupts, online, redact
from nezha_bootstrap import state as state_mod
from nezha_bootstrap.agent import local_step
from nezha_bootstrap.command import Command
from nezha_bootstrap.config import Config, display_url, same_dashboard
from nezha_bootstrap.errors import DashboardRefused, DashboardUnreachable, InstallerFailed, StateError
from nezha_bootstrap.facts import Facts
from nezha_bootstrap.node import ThisNode
from nezha_bootstrap.paths import Paths
from nezha_bootstrap.report import Reporter, RunResult
from nezha_bootstrap.retry import with_retries
from nezha_bootstrap.state import State
from nezha_bootstrap.system import COMMAND_TIMEOUT, Staged
from nezha_bootstrap.v0.script import InstallPlan

if TYPE_CHECKING:
    import httpx  # its one home is http.py; here only for the client's type

    from nezha_bootstrap.agent import Release
    from nezha_bootstrap.v0.api import Dashboard
    from nezha_bootstrap.v0.direct import V0Install
    from nezha_bootstrap.v0.online import V0Presence

Install = Union[InstallPlan, "V0Install"]


class Action(enum.Enum):
    NOTHING = "nothing to do"
    INSTALL = "install only"
    ADOPT = "look for the registered server under this URL, else register"
    REGISTER = "register and install"


@dataclass(frozen=True)
class Decision:
    """What a run must do and why (`decide`); `notes` are shown with it."""

    action: Action
    reason: str
    notes: tuple[str, ...] = ()


def decide(config: Config, saved: State | None, facts: Facts, on_disk: list[str]) -> Decision:
    """What this run must do, from what the last run left behind and how the agent on disk differs from
    what it installed (`on_disk`, agent.installed_drift: what `status` calls drift)."""
    if saved is None:
        return Decision(Action.REGISTER, "no saved state: this node was never registered")
    if config.force:
        return Decision(
            Action.REGISTER, "--force",
            (f"the dashboard keeps the server registered before ({saved.name!r}, tag {saved.tag or 'AutoRegister'!r}, "
             f"registered {saved.registered_at}); the token API cannot delete it: delete it in the dashboard",),
        )
    if not same_dashboard(saved.dashboard_url, config.dashboard_url):
        # a v1/v2 state's server id (v1/flow.py keeps it too) is another generation's row, with no node secret
        if saved.server_id is not None and saved.machine_id == facts.machine_id and saved.generation in (None, "v0"):
            return Decision(Action.ADOPT, f"registered as server {saved.server_id} with "
                                          f"{display_url(saved.dashboard_url)}, maybe the same dashboard")
        return Decision(Action.REGISTER, f"registered with another dashboard ({display_url(saved.dashboard_url)})")
    if saved.machine_id != facts.machine_id:
        return Decision(Action.REGISTER, "the machine-id changed: this is a clone of a registered image")
    if identity.unsealed_clone(saved.instance_id, facts.instance_id):
        return Decision(Action.REGISTER, "cloud-init's instance-id changed under the same machine-id",
                        (identity.unsealed_note(saved.instance_id, facts.instance_id),))
    notes = _unchangeable(config, saved)
    if saved.installed_at is None:
        return Decision(Action.INSTALL, "registered earlier, the install did not finish", notes)
    if on_disk:
        return Decision(Action.INSTALL, "; ".join(on_disk), notes)
    drift = install_drift(config, saved)
    if drift:
        return Decision(Action.INSTALL, "; ".join(drift), notes)
    return Decision(Action.NOTHING, "registered and installed", notes)


def install_drift(config: Config, saved: State) -> list[str]:
    """How the settings differ from what the last install put in place (a value not recorded is not compared)."""
    drift = []
    if (saved.probe_address, saved.probe_port, saved.tls) != (config.probe_address, config.probe_port, config.tls):
        drift.append("the probe address, port or TLS setting changed")
    if saved.method is not None and saved.method != method_of(config):
        drift.append(f"the install method changed ({saved.method} -> {method_of(config)})")
    if saved.agent_flags is not None and saved.agent_flags != config.agent_flags:
        drift.append(f"the agent flags changed ({' '.join(saved.agent_flags) or 'none'} -> "
                     f"{' '.join(config.agent_flags) or 'none'})")
    wanted = agent_version_of(config)
    if saved.method == method_of(config) == "direct" and saved.agent_version not in (None, wanted):
        drift.append(f"the agent version changed ({saved.agent_version} -> {wanted})")
    return drift


def _unchangeable(config: Config, saved: State) -> tuple[str, ...]:
    if (saved.name, saved.tag) == (config.name, config.tag):
        return ()
    return (
        f"the name or tag changed (was {saved.name!r}, tag {saved.tag!r}); the v0 token API cannot "
        "rename a server: rename it in the dashboard, or use --force to register a new one",
    )


class Runner:
    """Performs a decision against a dashboard client and the installer (the edge). A plain class (never
    compared or printed): a dataclass costs ~0.6 ms of a run's start."""

    def __init__(
        self,
        config: Config,
        facts: Facts,
        paths: Paths,
        reporter: Reporter,
    ) -> None:
        self.config = config
        self.facts = facts
        self.paths = paths
        self.reporter = reporter
        self.client: httpx.Client | None = None  # made on first use (--dry-run never imports httpx)
        self.downloads: httpx.Client | None = None  # the client of downloads (system store and --ca-bundle)

    def run(self) -> RunResult:
        """Take the lock, decide, register and install as needed; close the HTTP clients made on the way."""
        given = (self.client, self.downloads)
        try:
            return self._run()
        finally:
            for made, passed in zip((self.client, self.downloads), given):
                if made is not None and made is not passed:
                    made.close()
            self.client, self.downloads = given

    def _run(self) -> RunResult:
        with state_mod.locked(self.paths, self.config.lock_timeout):
            saved = state_mod.load(self.paths)
            pending = self._pending()
            decision = decide(self.config, saved, self.facts, on_disk_drift(self.paths, saved))
            self._announce(decision)
            if decision.action is Action.ADOPT and saved is not None:
                saved, decision = self._adopt(saved)
            if decision.action is not Action.REGISTER and saved is not None:
                self._settle(saved, pending)
            if decision.action is Action.NOTHING:  # decide() plans nothing only for a saved state (`or True`: dead)
                last_seen = saved.online if saved else None  # pragma: no mutate - see above; test_run_online reads it
                return self._result("nothing_to_do", decision, online=last_seen)
            self._check_bundled()
            before: set[int] | None = None  # the ids named like this node before it registered (this run)
            if decision.action is Action.REGISTER or saved is None:
                saved, before = self._register(pending, saved)
            redact.register(saved.secret)
            seen = self._install(saved, before)
            registered = decision.action is Action.REGISTER
            return self._result("registered_and_installed" if registered else "installed", decision,
                                online=True, online_after_s=seen.seconds)

    def _pending(self) -> state_mod.Pending | None:
        """The registration an earlier run left under way. A damaged record (power lost mid-write) is kept
        aside with a warning, never a failure at every boot: a registration then looks for the server first."""
        try:
            return state_mod.load_pending(self.paths, move_aside=True)
        except StateError as exc:
            if os.path.lexists(self.paths.pending_file):
                raise  # it could not be moved aside: stop, as before
            self.reporter.warn(str(exc))
            return None

    def _adopt(self, saved: State) -> tuple[State, Decision]:
        """The state names another dashboard URL: when this one lists the saved server id under the saved name
        and tag, it is the same dashboard (another spelling or name for it): keep the server and its secret."""
        from nezha_bootstrap.v0.api import Dashboard

        config = self.config
        assert config.token is not None  # a v0 run has its token
        dashboard = Dashboard(self._http(), config.dashboard_url, config.token, config.token_source)
        tag = saved.tag or "AutoRegister"
        ids = with_retries(lambda left: dashboard.ids_named(saved.name, tag, left), deadline=config.deadline,
                           what="server list", give_up=DashboardUnreachable, notify=self.reporter.info)
        if saved.server_id not in ids:
            shown = display_url(saved.dashboard_url)
            instead = Decision(Action.REGISTER, f"registered with another dashboard ({shown}); this one has no "
                                                f"server {saved.server_id} named {saved.name!r}")
            self._announce(instead)
            return saved, instead
        adopted = dataclasses.replace(saved, dashboard_url=config.dashboard_url)
        state_mod.save(self.paths, adopted)
        self.reporter.info(f"{display_url(config.dashboard_url)} lists this node's server {saved.server_id} "
                           f"({saved.name!r}, tag {tag!r}): the same dashboard as {display_url(saved.dashboard_url)}; "
                           "kept, not registered again")
        again = decide(config, adopted, self.facts, on_disk_drift(self.paths, adopted))
        self._announce(again)
        return adopted, again

    def _check_bundled(self) -> None:
        """From a bundle: the agent this node needs is in it and intact, checked before the dashboard is asked
        for anything (a missing one is exit 2, an altered one exit 5, and no server is made)."""
        from nezha_bootstrap import agent

        release = _v0_release(self.config)
        if release is not None and release.bundled is not None:
            agent.check_bundled(release)

    def _settle(self, saved: State, pending: state_mod.Pending | None) -> None:
        """Local upkeep of a registered node: forget a registration its state has saved since (a run killed
        between the save and the removal), and record cloud-init's instance-id where none was recorded."""
        if pending is not None and saved.registered_at is not None and pending.started_at <= saved.registered_at:
            state_mod.clear_pending(self.paths)
        if self.config.agent.secret and not saved.agent_secret_given:
            # The probe this secret caused (run.resolve_generation) saw v0: not again while it stays.
            saved = dataclasses.replace(saved, agent_secret_given=True)
            state_mod.save(self.paths, saved)
        if identity.recorded_late(saved.instance_id, self.facts.instance_id):
            self.reporter.warn(identity.recorded_late_note(self.facts.instance_id))
            state_mod.save(self.paths, dataclasses.replace(saved, instance_id=self.facts.instance_id))

    def _announce(self, decision: Decision) -> None:
        self.reporter.info(f"plan: {decision.action.value} ({decision.reason})")
        for note in decision.notes:
            self.reporter.warn(note)

    def _result(self, outcome: str, decision: Decision, *, online: bool | None,
                online_after_s: float | None = None) -> RunResult:
        return RunResult(outcome=outcome, generation="v0", dashboard=display_url(self.config.dashboard_url),
                         method=method_of(self.config), reason=decision.reason, name=self.config.name,
                         online=online, online_after_s=online_after_s)

    def _http(self) -> httpx.Client:
        if self.client is None:
            from nezha_bootstrap.http import make_client

            self.client = make_client(self.config.ca_bundle, urls=(self.config.dashboard_url,))
        return self.client

    def _download_client(self, urls: tuple[str, ...]) -> httpx.Client:
        if self.downloads is None:
            from nezha_bootstrap.http import make_download_client

            self.downloads = make_download_client(self.config.ca_bundle, urls=urls)
        return self.downloads

    def _register(self, pending: state_mod.Pending | None, saved: State | None = None) -> tuple[State, set[int]]:
        from nezha_bootstrap.v0.api import Dashboard, Registration

        config = self.config
        assert config.token is not None  # a v0 run has its token: config.build and run.check_v0_settings
        dashboard = Dashboard(self._http(), config.dashboard_url, config.token, config.token_source)
        tag = config.tag or "AutoRegister"  # the dashboard's default tag
        if pending is not None:
            self._look_for(pending, dashboard)
        elif not config.force:
            damaged = state_mod.damaged_since(self.paths, saved.registered_at if saved else None)
            if damaged:
                self._look_for_damaged(damaged, dashboard, tag)
        kept: list[State] = []
        registration = Registration(
            dashboard, config.register_body(), tag=tag,
            keep=lambda secret: kept.append(self._save_registration(secret)),
            pending=lambda before: state_mod.save_pending(self.paths, state_mod.Pending(
                dashboard_url=config.dashboard_url, name=config.name, tag=tag, before=tuple(sorted(before)),
                machine_id=self.facts.machine_id, started_at=state_mod.now())),
            # A stop signal that arrives between the complete answer and its save waits for the save.
            guard=interrupts.deferred,
        )
        # A server whose secret cannot be kept must never be made: prove the state fits first.
        state_mod.check_room(self.paths)
        with self.reporter.step("register", f"registering {config.name!r} with {display_url(config.dashboard_url)}"):
            with_retries(
                registration.attempt, deadline=config.deadline, what="register",
                give_up=DashboardUnreachable, notify=self.reporter.info,
            )
        kept[-1] = self._record_id(kept[-1], dashboard, registration.before or set(), registration.top, tag)
        if registration.before:
            ids = ", ".join(str(i) for i in sorted(registration.before))
            self.reporter.warn(f"the dashboard already had a server named {config.name!r} under tag {tag!r} "
                               f"(id {ids}); this one is registered beside it: give nodes distinct names (NODE_NAME "
                               "with {ip} or {machine_id}), or delete the old one if its machine is gone")
        return kept[-1], set(registration.before or ())

    def _look_for(self, pending: state_mod.Pending, dashboard: Dashboard) -> None:
        """An earlier run stopped while registering (killed, power lost): never register blindly. Look for the
        server it may have made, as the lost-answer path does, and stop if it is there."""
        shown = display_url(pending.dashboard_url)
        if not same_dashboard(pending.dashboard_url, self.config.dashboard_url):
            self.reporter.warn(f"an earlier run was stopped while registering {pending.name!r} with {shown} "
                               f"({pending.started_at}); if a server of that name that never connected is there, "
                               "delete it")
            state_mod.clear_pending(self.paths)
            return
        self.reporter.info(f"an earlier run was stopped while registering {pending.name!r} ({pending.started_at}): "
                           "looking for the server it may have made")
        now = with_retries(lambda left: dashboard.ids_named(pending.name, pending.tag, left),
                           deadline=self.config.deadline, what="server list", give_up=DashboardUnreachable,
                           notify=self.reporter.info)
        made = sorted(now - set(pending.before))
        if made:
            raise DashboardRefused(
                f"register: an earlier run was stopped while registering {pending.name!r} under tag {pending.tag!r} "
                f"({pending.started_at}), and the dashboard now has a new server so named (id "
                f"{', '.join(str(i) for i in made)}), whose secret never arrived. Not registering again: delete "
                "that server in the dashboard, then run again"
            )

    def _record_id(self, saved: State, dashboard: Dashboard, before: set[int], top: int, tag: str) -> State:
        """The new server's id (the register answer holds only the secret), read by id above the highest one
        the list before the register call showed (a few small GETs, whatever the fleet's size); only when
        that does not end does it list the tag again. Best effort: without the id the online wait finds the
        server in one list, and the server is never adopted under another URL."""
        from nezha_bootstrap.retry import Transient

        name, ends = self.config.name, time.monotonic() + min(self.config.deadline, 10.0)  # one budget for both
        try:
            made = dashboard.new_ids_named(name, tag, top, before, ends - time.monotonic())
            if made is None:
                made = dashboard.ids_named(name, tag, max(ends - time.monotonic(), 0.001)) - before
        except (Transient, DashboardRefused, DashboardUnreachable):
            return saved
        if len(made) != 1:
            return saved  # two runs registering the same name at once: neither id is surely ours
        recorded = dataclasses.replace(saved, server_id=made.pop())
        state_mod.save(self.paths, recorded)
        return recorded

    def _look_for_damaged(self, damaged: list[Path], dashboard: Dashboard, tag: str) -> None:
        """A state or pending record was damaged (power loss mid-write) and kept aside: it may have held the
        secret of a server the dashboard has. Look for a server named like this node first, and stop if one is
        there: the token API cannot read its secret back, so registering would make a second one."""
        name = self.config.name
        self.reporter.info(f"{damaged[-1]} was kept aside as damaged: looking for a server named {name!r} under "
                           f"tag {tag!r} before registering")
        found = with_retries(lambda left: dashboard.ids_named(name, tag, left), deadline=self.config.deadline,
                             what="server list", give_up=DashboardUnreachable, notify=self.reporter.info)
        if found:
            raise DashboardRefused(
                f"register: this node's saved state was damaged (kept aside as {damaged[-1]}), and the dashboard "
                f"has a server named {name!r} under tag {tag!r} (id {', '.join(str(i) for i in sorted(found))}), "
                "probably this node's, whose secret was in that file. Not registering again: delete that server in "
                "the dashboard (or give this node another name), then run again; --force registers beside it"
            )

    def _save_registration(self, secret: str) -> State:
        """Save a new secret at once: a failed install must never cost a second server."""
        config = self.config
        redact.register(secret)
        saved = State(
            dashboard_url=config.dashboard_url, name=config.name, tag=config.tag,
            probe_address=config.probe_address, probe_port=config.probe_port, tls=config.tls,
            secret=secret, machine_id=self.facts.machine_id, registered_at=state_mod.now(),
            instance_id=self.facts.instance_id, agent_secret_given=bool(config.agent.secret),
        )
        try:
            state_mod.save(self.paths, saved)
        except StateError as exc:
            raise StateError(
                f"{exc}. The dashboard made the server {config.name!r}, whose secret is lost now: "
                "delete it in the dashboard, fix the state directory, then run again"
            ) from exc
        state_mod.clear_pending(self.paths)
        return saved

    def _install(self, saved: State, before: set[int] | None) -> online.Online:
        """Install the agent and wait until the dashboard sees it: only then is the install saved as done."""
        from nezha_bootstrap import agent

        config = self.config
        plan = install_plan(config, self.paths, saved.secret)
        payload = self._fetch(plan)
        # Before the agent starts: its log is read from where it ends now, its journal from this moment.
        watched = online.system_sources(self.paths, self.facts.systemd_running, time.time())
        try:
            if saved.installed_at is not None:
                # The old agent is about to be replaced: until the new one is online, nothing is installed,
                # or a failed re-install followed by a run with the old settings would look done.
                saved = dataclasses.replace(saved, installed_at=None)
                state_mod.save(self.paths, saved)
            with self.reporter.step("install", _install_what(plan)):
                self._perform(plan, payload)
        finally:
            if isinstance(payload, Staged):
                payload.discard()
        with self.reporter.step("verify", f"verifying {plan.unit}"):
            agent.verify_v0_unit(plan, self.paths, saved.secret)
            if self.facts.systemd_running:
                agent.wait_active(agent.is_active)
        if isinstance(plan, InstallPlan):
            self._remove_script_leftovers()
        presence = self._presence(saved, before)
        port = agentport.watch(config.probe_address, config.probe_port, config.tls, config.ca_bundle)
        seen = self._await_online(saved, [presence, port, *watched.sources], presence)
        installed = dataclasses.replace(
            saved, probe_address=config.probe_address, probe_port=config.probe_port, tls=config.tls,
            installed_at=state_mod.now(), method=method_of(config), agent_flags=config.agent_flags,
            agent_version=agent_version_of(config), instance_id=self.facts.instance_id or saved.instance_id,
            agent_secret_given=saved.agent_secret_given or bool(config.agent.secret),
            online=True, online_at=state_mod.now(), server_id=presence.server_id or saved.server_id,
        )
        state_mod.save(self.paths, installed)
        return seen

    def _presence(self, saved: State, before: set[int] | None) -> V0Presence:
        from nezha_bootstrap.v0.api import Dashboard
        from nezha_bootstrap.v0.online import V0Presence

        assert self.config.token is not None  # a v0 run has its token: config.build and run.check_v0_settings
        dashboard = Dashboard(self._http(), self.config.dashboard_url, self.config.token, self.config.token_source)
        return V0Presence(dashboard, saved.name, saved.tag or "AutoRegister", saved.server_id, before,
                          self.reporter.warn)

    def _await_online(self, saved: State, sources: list[online.Source], presence: V0Presence) -> online.Online:
        """The online wait; a verdict is saved (the install stays unfinished: the next run redoes it)."""
        config = self.config
        target = online.Target(config.probe_address, config.probe_port, config.tls, secret_kind="node secret")
        waiter = online.Waiter(sources, target, config.online_timeout)
        try:
            return online.await_online(waiter, self.reporter.step, self._stop_agent)
        except online.NotOnline as verdict:
            self.reporter.context.update(online=False, online_after_s=None)
            state_mod.save(self.paths, dataclasses.replace(
                saved, online=False, online_at=None, server_id=presence.server_id or saved.server_id))
            raise verdict

    def _stop_agent(self) -> None:
        """`nezha-agent service stop` (the v0.20.5 agent's own command, under systemd or SysV alike)."""
        self.reporter.info("stopping the agent: nezha-agent service stop")
        Command((str(self.paths.agent_binary), "service", "stop"), cwd=self.paths.agent_dir, must_succeed=False,
                name="`nezha-agent service stop`", track=self.paths.child_file,
                environ=self.facts.environ).apply(self.reporter)

    def _remove_script_leftovers(self) -> None:
        """install.sh unzips its release into its cwd (/opt/nezha/agent); there its `mv nezha-agent` onto
        itself fails ("are the same file"), which skips its `rm` of the zip and README (installer-v0.md).
        Removed after a verified install; only regular files (a link is left as it is)."""
        for path in [*self.paths.agent_dir.glob("nezha-agent_linux_*.zip"), self.paths.agent_dir / "README.md"]:
            if path.is_file() and not path.is_symlink():
                with local_step(f"remove install.sh's leftover {path}"):
                    path.unlink()
                self.reporter.detail(f"removed install.sh's leftover {path}")

    def _fetch(self, plan: Install) -> bytes | Staged:
        """install.sh, or the pinned v0 agent's binary (streamed into a file beside its place), downloaded
        and checked."""
        from nezha_bootstrap import agent
        from nezha_bootstrap.v0.script import download_script

        notify = self.reporter.info
        if isinstance(plan, InstallPlan):
            with self.reporter.step("download", f"downloading {display_url(plan.script_url)}"):
                # The client of downloads: a private-CA dashboard (--ca-bundle) and GitHub both verify.
                client = self._download_client((plan.script_url,))
                return download_script(client, self.config, self.config.deadline, notify)
        release = plan.release
        with local_step(f"create the directory {plan.cwd}"):
            plan.cwd.mkdir(parents=True, exist_ok=True)
        with local_step(f"write {self.paths.agent_binary}"):
            binary = Staged(self.paths.agent_binary, 0o755)
        try:
            with self.reporter.step("download", agent.obtaining(release)):
                client = self._download_client((release.checksums_url, release.asset_url))
                with local_step(f"write {self.paths.agent_binary}"):
                    agent.fetch_binary(client, release, self.config.deadline, notify, binary.file)
        except BaseException:
            binary.discard()
            raise
        return binary

    def _perform(self, plan: Install, payload: bytes | Staged) -> None:
        """Write the script or the binary, uninstall an existing agent, run the install command."""
        from nezha_bootstrap import system

        # `or` is as good: install.sh's plan always comes with its text, the direct one with a staged binary (_fetch)
        if isinstance(plan, InstallPlan) and isinstance(payload, bytes):  # pragma: no mutate - see above
            system.ensure_private_dir(plan.script_path.parent, self.paths.root)
            with local_step(f"write {plan.script_path}"):
                system.atomic_write(plan.script_path, payload, mode=0o700,
                                    durable=False)  # pragma: no mutate - None is as false: run now, then removed
        with local_step(f"create the directory {plan.cwd}"):
            plan.cwd.mkdir(parents=True, exist_ok=True)
        if isinstance(payload, Staged):
            with local_step(f"write {self.paths.agent_binary}"):
                payload.commit()
        try:
            for command in install_commands(plan, self.config.deadline, track=self.paths.child_file,
                                            confine=self.paths.root, environ=self.facts.environ):
                if command is not None:
                    command.apply(self.reporter)
        finally:
            if isinstance(plan, InstallPlan):
                shutil.rmtree(plan.script_path.parent, ignore_errors=True)


def agent_version_of(config: Config) -> str | None:
    """The v0 agent version an install pins: --method direct's release; install.sh picks its own (None)."""
    release = _v0_release(config, machine="x86_64")  # the version only: any architecture names it
    return release.version if release else None


def method_of(config: Config) -> str:
    """How the v0 agent is installed: install.sh (script) or its own `service install` (direct)."""
    return "direct" if config.agent.v0_direct else "script"


def on_disk_drift(paths: Paths, saved: State | None) -> list[str]:
    """What `status` calls drift for an installed v0 state (none before an install finished)."""
    from nezha_bootstrap import agent
    from nezha_bootstrap.config import bracketed

    if saved is None or saved.installed_at is None:
        return []
    return agent.installed_drift(paths, saved.secret, None, f"{bracketed(saved.probe_address)}:{saved.probe_port}",
                                 saved.tls, saved.agent_flags)


def install_plan(config: Config, paths: Paths, secret: str) -> Install:
    """The install step as data: install.sh's call, or the v0 agent's own `service install`."""
    from nezha_bootstrap.v0 import script

    release = _v0_release(config)
    if release is None:
        return script.plan(config, paths, secret)
    from nezha_bootstrap.v0.direct import plan_v0

    return plan_v0(config, paths, secret, release)


def _v0_release(config: Config, machine: str | None = None) -> Release | None:
    """--method direct's pinned v0 release (v0/direct.py), or None: install.sh, the default, never loads it."""
    if not config.agent.v0_direct:
        return None
    from nezha_bootstrap.v0.direct import v0_release

    return v0_release(config, machine)


def install_commands(plan: Install, deadline: float, track: Path | None = None,
                     confine: Path | None = None, environ: Mapping[str, str] | None = None) -> list[Command | None]:
    """The commands that install the agent: uninstall the existing one (if any), then install; each recorded
    in `track` while it runs, so that no run starts one while one of an earlier run is alive; for the root
    `confine` (effects.Command.confine: under another root than /, only the stubs run); their environment
    made from `environ` (facts.Facts.environ)."""
    if isinstance(plan, InstallPlan):
        name, timeout, env = "install.sh", deadline, plan.env_set
    else:
        name, timeout, env = "`nezha-agent service install`", COMMAND_TIMEOUT, ()
    uninstall = None
    if plan.uninstall_first:
        uninstall = Command(plan.uninstall_first, cwd=plan.cwd, must_succeed=False, name="the uninstall of the agent",
                            track=track, confine=confine, environ=environ)
    return [uninstall, Command(plan.argv, cwd=plan.cwd, timeout=timeout, error=InstallerFailed, name=name, env=env,
                               track=track, confine=confine, environ=environ)]


def _install_what(plan: Install) -> str:
    if isinstance(plan, InstallPlan):
        return "running install.sh install_agent"
    return f"nezha-agent service install -s {plan.expect_server}" + (" --tls" if plan.expect_tls else "")


def run(this: ThisNode) -> RunResult:
    """A v0 run: register once and install the agent with the node secret."""
    config = this.config
    this.reporter.context.update(name=config.name, dashboard=display_url(config.dashboard_url), generation="v0")
    return Runner(config, this.facts, this.paths, this.reporter).run()


def dry_run(this: ThisNode) -> RunResult:
    """The v0 plan: what `run` would send, run and write; reads the state, changes nothing."""
    config, facts, paths = this.config, this.facts, this.paths
    saved = state_mod.load(paths, move_aside=False)  # pragma: no mutate - None is as false (True: test_run fails)
    decision = decide(config, saved, facts, on_disk_drift(paths, saved))
    lines = [f"plan: {decision.action.value} ({decision.reason})"]
    lines += [f"note: {note}" for note in decision.notes]
    if decision.action is Action.ADOPT and saved is not None:
        lines.append(f"GET {display_url(config.dashboard_url)}/api/v1/server/list?tag={saved.tag or 'AutoRegister'}: "
                     f"if it lists server {saved.server_id} named {saved.name!r}, keep it; else:")
        decision = dataclasses.replace(decision, action=Action.REGISTER)
    details: dict[str, Any] = {"action": decision.action.name.lower()}
    if decision.action is not Action.NOTHING:
        if decision.action is Action.REGISTER:
            request = register_request(config)
            lines += _pending_lines(config, _planned_pending(paths, saved, config.force))
            lines += _request_lines(config, paths, request)
            details["request"] = request
        # Equivalent mutants: describe() shows <secret> in its place, whichever valid secret (state.load checks a
        # saved one: letters and digits, as the placeholder) is planned.
        secret = saved.secret if saved and decision.action is Action.INSTALL else "0" * 18  # pragma: no mutate
        described = install_plan(config, paths, secret).describe()
        lines += [*described, f"write {paths.state_file} (0600): installed"]
        details["install"] = described
    return RunResult(outcome="dry_run", generation="v0", dashboard=display_url(config.dashboard_url),
                     method=method_of(config), reason=decision.reason, name=config.name, plan=tuple(lines),
                     details=details)


def register_request(config: Config) -> dict[str, Any]:
    """The register request as --dry-run shows it (the token masked)."""
    return {"method": "POST", "url": display_url(config.register_url),
            "headers": {"Authorization": "<token>"}, "body": config.register_body()}


def _planned_pending(paths: Paths, saved: State | None, force: bool) -> state_mod.Pending | str | None:
    """For --dry-run: the registration left under way, or the damaged record a run looks for first (its path)."""
    try:
        pending = state_mod.load_pending(paths)
    except StateError:
        return str(paths.pending_file)
    if pending is not None or force:
        return pending
    damaged = state_mod.damaged_since(paths, saved.registered_at if saved else None)
    return str(damaged[-1]) if damaged else None


def _pending_lines(config: Config, pending: state_mod.Pending | str | None) -> list[str]:
    """What a run does first about a registration an earlier, killed run left under way."""
    if pending is None:
        return []
    if isinstance(pending, str):
        return [f"keep the damaged {pending} aside; GET {display_url(config.dashboard_url)}/api/v1/server/list"
                f"?tag={config.tag or 'AutoRegister'} (stop if a server named like this node is there)"]
    if not same_dashboard(pending.dashboard_url, config.dashboard_url):
        return [f"warn about the registration of {pending.name!r} left under way with "
                f"{display_url(pending.dashboard_url)} ({pending.started_at}), and forget it"]
    return [f"GET {display_url(config.dashboard_url)}/api/v1/server/list?tag={pending.tag} (the registration of "
            f"{pending.name!r} an earlier run left under way at {pending.started_at}: stop if it made a server)"]


def _request_lines(config: Config, paths: Paths, request: dict[str, Any]) -> list[str]:
    tag = config.tag or "AutoRegister"
    return [
        f"GET {display_url(config.dashboard_url)}/api/v1/server/list?tag={tag} (servers already named like this node)",
        f"POST {request['url']}",
        "  Authorization: <token>",
        "  Content-Type: application/json",
        f"  body: {json.dumps(request['body'], ensure_ascii=False)}",  # pragma: no mutate - None is as false
        f"write {paths.state_file} (0600): the node secret",
    ]
