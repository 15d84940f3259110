"""The `run` flow: decide what to do from config and saved state (pure), then do it (the edge)."""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import os
import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from nezha_bootstrap import interrupts, redact
from nezha_bootstrap import state as state_mod
from nezha_bootstrap.config import Config, display_url
from nezha_bootstrap.errors import DashboardUnreachable, InstallerFailed, StateError
from nezha_bootstrap.facts import Facts
from nezha_bootstrap.v0.script import InstallPlan
from nezha_bootstrap.paths import Paths
from nezha_bootstrap.report import Reporter
from nezha_bootstrap.retry import with_retries
from nezha_bootstrap.state import State

if TYPE_CHECKING:
    from nezha_bootstrap.agent import Release, V0Install
    from nezha_bootstrap.v0.script import Expected

class Action(enum.Enum):
    NOTHING = "nothing to do"
    INSTALL = "install only"
    REGISTER = "register and install"


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    notes: tuple[str, ...] = ()


def decide(config: Config, saved: State | None, facts: Facts, unit_present: bool) -> Decision:
    """What this run must do, from what the last run left behind."""
    if saved is None:
        return Decision(Action.REGISTER, "no saved state: this node was never registered")
    if config.force:
        return Decision(
            Action.REGISTER, "--force",
            ("the dashboard keeps the server registered before; the token API cannot delete it",),
        )
    if saved.dashboard_url != config.dashboard_url:
        return Decision(Action.REGISTER, f"registered with another dashboard ({display_url(saved.dashboard_url)})")
    if saved.machine_id != facts.machine_id:
        return Decision(Action.REGISTER, "the machine-id changed: this is a clone of a registered image")
    notes = _unchangeable(config, saved)
    if saved.installed_at is None:
        return Decision(Action.INSTALL, "registered earlier, the install did not finish", notes)
    if not unit_present:
        return Decision(Action.INSTALL, "the agent unit is gone", notes)
    if (saved.probe_address, saved.probe_port, saved.tls) != (config.probe_address, config.probe_port, config.tls):
        return Decision(Action.INSTALL, "the probe address, port or TLS setting changed", notes)
    return Decision(Action.NOTHING, "registered and installed", notes)


def _unchangeable(config: Config, saved: State) -> tuple[str, ...]:
    if (saved.name, saved.tag) == (config.name, config.tag):
        return ()
    return (
        f"the name or tag changed (was {saved.name!r}, tag {saved.tag!r}); the v0 token API cannot "
        "rename a server: rename it in the dashboard, or use --force to register a new one",
    )


@dataclass
class Runner:
    """Performs a decision against a dashboard client and the installer (the edge)."""

    config: Config
    facts: Facts
    paths: Paths
    reporter: Reporter
    client: Any = None  # an httpx.Client; built lazily so --dry-run never imports httpx
    direct: Release | None = None  # --method direct: this agent release runs its own `service install`
    downloads: Any = None  # the httpx.Client of downloads (system store and --ca-bundle)

    def run(self) -> dict[str, Any]:
        """Take the lock, decide, register and install as needed; return the --json summary."""
        with state_mod.locked(self.paths, self.config.lock_timeout):
            saved = state_mod.load(self.paths)
            decision = decide(self.config, saved, self.facts, self._unit_present())
            self._announce(decision)
            if decision.action is Action.NOTHING:
                return self._summary("nothing_to_do", decision)
            if decision.action is Action.REGISTER or saved is None:
                saved = self._register()
            redact.register(saved.secret)
            self._install(saved)
            registered = decision.action is Action.REGISTER
            return self._summary("registered_and_installed" if registered else "installed", decision)

    def _announce(self, decision: Decision) -> None:
        self.reporter.info(f"plan: {decision.action.value} ({decision.reason})")
        for note in decision.notes:
            self.reporter.warn(note)

    def _unit_present(self) -> bool:
        return self.paths.agent_unit.exists() or self.paths.agent_openrc.exists()

    def _summary(self, outcome: str, decision: Decision) -> dict[str, Any]:
        return {
            "outcome": outcome,
            "reason": decision.reason,
            "generation": "v0",
            "method": "direct" if self.direct else "script",
            "name": self.config.name,
            "dashboard": display_url(self.config.dashboard_url),
        }

    def _http(self) -> Any:
        if self.client is None:
            from nezha_bootstrap.v0.api import make_client

            self.client = make_client(self.config.ca_bundle, urls=(self.config.dashboard_url,))
        return self.client

    def _download_client(self, urls: tuple[str, ...]) -> Any:
        if self.downloads is None:
            from nezha_bootstrap.v0.api import make_download_client

            self.downloads = make_download_client(self.config.ca_bundle, urls=urls)
        return self.downloads

    def _register(self) -> State:
        from nezha_bootstrap.v0.api import Dashboard, Registration

        config = self.config
        kept: list[State] = []
        registration = Registration(
            Dashboard(self._http(), config.dashboard_url, config.token),
            config.register_body(),
            tag=config.tag or "AutoRegister",  # the dashboard's default tag
            keep=lambda secret: kept.append(self._save_registration(secret)),
            # A stop signal waits for the POST and the save (at most the request's timeout).
            guard=interrupts.deferred,
        )
        # A server whose secret cannot be kept must never be made: prove the state fits first.
        state_mod.check_room(self.paths)
        with self.reporter.step("register", f"registering {config.name!r} with {display_url(config.dashboard_url)}"):
            with_retries(
                registration.attempt, deadline=config.deadline, what="register",
                give_up=DashboardUnreachable, notify=self.reporter.info,
            )
        return kept[-1]

    def _save_registration(self, secret: str) -> State:
        """Save a new secret at once: a failed install must never cost a second server."""
        config = self.config
        redact.register(secret)
        saved = State(
            dashboard_url=config.dashboard_url, name=config.name, tag=config.tag,
            probe_address=config.probe_address, probe_port=config.probe_port, tls=config.tls,
            secret=secret, machine_id=self.facts.machine_id, registered_at=state_mod.now(),
        )
        try:
            state_mod.save(self.paths, saved)
        except StateError as exc:
            raise StateError(
                f"{exc}. The dashboard made the server {config.name!r}, whose secret is lost now: "
                "delete it in the dashboard, fix the state directory, then run again"
            ) from exc
        return saved

    def _install(self, saved: State) -> None:
        from nezha_bootstrap.v0 import script as installer

        config = self.config
        plan, perform, what = self._prepare_direct(saved) if self.direct else self._prepare_script(saved)
        if saved.installed_at is not None:
            # The old agent is about to be replaced: until the new one verifies, nothing is installed,
            # or a failed re-install followed by a run with the old settings would look done.
            state_mod.save(self.paths, dataclasses.replace(saved, installed_at=None))
        with self.reporter.step("install", what):
            perform()
        with self.reporter.step("verify", f"verifying {plan.unit}"):
            installer.verify_unit(plan, self.paths, saved.secret)
            if self.facts.systemd_running:
                installer.wait_active(_systemctl_is_active)
        installed = dataclasses.replace(
            saved, probe_address=config.probe_address, probe_port=config.probe_port, tls=config.tls,
            installed_at=state_mod.now(), method="direct" if self.direct else "script",
        )
        state_mod.save(self.paths, installed)

    def _prepare_script(self, saved: State) -> tuple[Expected, Callable[[], None], str]:
        """Download install.sh; return its plan and the call that runs it."""
        from nezha_bootstrap.v0 import script as installer

        plan = installer.plan(self.config, self.paths, saved.secret)
        with self.reporter.step("download", f"downloading {display_url(plan.script_url)}"):
            content = self._download(plan)
        return plan, functools.partial(self._run_installer, plan, content), "running install.sh install_agent"

    def _prepare_direct(self, saved: State) -> tuple[Expected, Callable[[], None], str]:
        """Download and check the pinned v0 agent; return its plan and the call that installs it."""
        from nezha_bootstrap import agent

        assert self.direct is not None
        release = self.direct
        plan = agent.plan_v0(self.config, self.paths, saved.secret, release)
        with self.reporter.step("download", f"downloading nezha-agent v{release.version} ({release.asset})"):
            client = self._download_client((release.checksums_url, release.asset_url))
            binary = agent.fetch_binary(client, release, self.config.deadline, self.reporter.info)
        what = f"nezha-agent service install -s {plan.expect_server}" + (" --tls" if plan.expect_tls else "")
        return plan, functools.partial(self._run_direct, plan, binary), what

    def _download(self, plan: InstallPlan) -> bytes:
        from nezha_bootstrap.v0.api import download
        from nezha_bootstrap.v0.script import SCRIPT_CAP, check_script

        # The client of downloads: a private-CA dashboard (--ca-bundle) and GitHub both verify.
        content = download(self._download_client((plan.script_url,)), plan.script_url, cap=SCRIPT_CAP,
                           deadline=self.config.deadline, notify=self.reporter.info, what="download install.sh")
        check_script(content, plan.script_sha256)
        return content

    def _run_installer(self, plan: InstallPlan, content: bytes) -> None:
        from nezha_bootstrap import system

        system.ensure_private_dir(plan.script_path.parent)
        system.atomic_write(plan.script_path, content, mode=0o700)
        plan.cwd.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in plan.env_unset}
        env.update(dict(plan.env_set))
        try:
            if plan.uninstall_first:
                self.reporter.info("  uninstalling the existing agent first")
                system.run(plan.uninstall_first, cwd=plan.cwd, env=env, timeout=UNINSTALL_TIMEOUT,
                           on_line=lambda line: self.reporter.detail(f"  | {line}"))
            done = system.run(plan.argv, cwd=plan.cwd, env=env, timeout=self.config.deadline,
                              on_line=lambda line: self.reporter.detail(f"  | {line}"))
        except OSError as exc:
            raise InstallerFailed(f"cannot start the installer: {exc.strerror}") from exc
        finally:
            shutil.rmtree(plan.script_path.parent, ignore_errors=True)
        if done.timed_out:
            raise InstallerFailed(
                f"install.sh did not finish within {self.config.deadline:g} s; its process group was killed"
            )
        if done.returncode != 0:
            raise InstallerFailed(
                f"install.sh exited with status {done.returncode}; run again with -v to see its output"
            )


    def _run_direct(self, plan: V0Install, binary: bytes) -> None:
        """Write the agent, uninstall an existing unit, run the agent's `service install` (clean env)."""
        from nezha_bootstrap import agent, system

        plan.cwd.mkdir(parents=True, exist_ok=True)
        system.atomic_write(self.paths.agent_binary, binary, mode=0o755)
        env = agent.clean_env(os.environ)
        show = functools.partial(_show_line, self.reporter)
        try:
            if plan.uninstall_first:
                self.reporter.info("  uninstalling the existing agent first")
                system.run(plan.uninstall_first, cwd=plan.cwd, env=env, timeout=UNINSTALL_TIMEOUT, on_line=show)
            done = system.run(plan.argv, cwd=plan.cwd, env=env, timeout=agent.COMMAND_TIMEOUT, on_line=show)
        except OSError as exc:
            raise InstallerFailed(f"cannot run {plan.argv[0]}: {exc.strerror}") from exc
        if done.timed_out:
            raise InstallerFailed(f"`nezha-agent service install` did not finish within {agent.COMMAND_TIMEOUT:g} s; "
                                  "its process group was killed")
        if done.returncode != 0:
            raise InstallerFailed(f"`nezha-agent service install` exited with status {done.returncode}; "
                                  "run again with -v to see its output")


def _show_line(reporter: Reporter, line: str) -> None:
    reporter.detail(f"  | {line}")


UNINSTALL_TIMEOUT = 60.0


def _systemctl_is_active() -> bool:
    from nezha_bootstrap import system

    try:
        done = system.run(["systemctl", "is-active", "--quiet", "nezha-agent"], timeout=10)
    except OSError:
        return False
    return done.returncode == 0


def plan_lines(config: Config, facts: Facts, paths: Paths,
               direct: Release | None = None) -> tuple[list[str], dict[str, Any]]:
    """The --dry-run plan: what `run` would send, run and write; reads the state, changes nothing."""
    from nezha_bootstrap import agent
    from nezha_bootstrap.v0 import script as installer

    saved = state_mod.load(paths, move_aside=False)
    unit_present = paths.agent_unit.exists() or paths.agent_openrc.exists()
    decision = decide(config, saved, facts, unit_present)
    lines = [f"plan: {decision.action.value} ({decision.reason})"]
    lines += [f"note: {note}" for note in decision.notes]
    payload: dict[str, Any] = {
        "outcome": "dry_run", "action": decision.action.name.lower(), "reason": decision.reason,
        "generation": "v0", "method": "direct" if direct else "script", "name": config.name,
        "dashboard": display_url(config.dashboard_url),
    }
    if decision.action is Action.NOTHING:
        return lines, payload
    if decision.action is Action.REGISTER:
        tag = config.tag or "AutoRegister"
        lines += [
            f"GET {display_url(config.dashboard_url)}/api/v1/server/list?tag={tag} "
            "(servers already named like this node)",
            f"POST {display_url(config.register_url)}",
            "  Authorization: <token>",
            "  Content-Type: application/json",
            f"  body: {json.dumps(config.register_body(), ensure_ascii=False)}",
            f"write {paths.state_file} (0600): the node secret",
        ]
        payload["request"] = {"method": "POST", "url": display_url(config.register_url),
                              "headers": {"Authorization": "<token>"}, "body": config.register_body()}
    secret = saved.secret if saved and decision.action is Action.INSTALL else "0" * 18  # masked in describe()
    described = (installer.plan(config, paths, secret) if direct is None
                 else agent.plan_v0(config, paths, secret, direct)).describe()
    lines += described
    lines.append(f"write {paths.state_file} (0600): installed")
    payload["install"] = described
    return lines, payload
