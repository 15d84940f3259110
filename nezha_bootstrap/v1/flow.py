"""The `run` flow for v1/v2 dashboards: generation, stable uuid, direct agent install (dashboard-v1-v2.md).

A v1/v2 dashboard has no register API: the agent enrolls itself with a user's agent secret and its
own uuid. This flow picks the generation (probed once, then cached in the state), derives the uuid
from the machine-id, installs the pinned agent release with a config.yml holding both, and verifies.
"""

from __future__ import annotations

import dataclasses
import platform
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nezha_bootstrap import agent, agentport, identity, online, redact
from nezha_bootstrap import state as state_mod
from nezha_bootstrap.agent import local_step
from nezha_bootstrap.command import Command
from nezha_bootstrap.config import AgentConfig, Config, display_url, same_dashboard
from nezha_bootstrap.errors import InstallerFailed, SettingsError
from nezha_bootstrap.facts import Facts
from nezha_bootstrap.generation import Generation
from nezha_bootstrap.node import ThisNode
from nezha_bootstrap.paths import Paths
from nezha_bootstrap.report import Reporter, RunResult
from nezha_bootstrap.state import State

if TYPE_CHECKING:
    import httpx  # its one home is http.py; here only for the client's type

    from nezha_bootstrap.system import Staged
    from nezha_bootstrap.v1.naming import NodeNaming
    from nezha_bootstrap.v1.online import V2Presence

NAMING_NOTE = (
    "the dashboard named this server with two random words; to name it (and set its note, group and "
    "guest visibility) give a v2.1+ access token (NEZHA_TOKEN=nzp_...), run `nezha-bootstrap reconcile`, "
    "or rename it in the dashboard, matching the uuid"
)


def agent_values(config: Config, uuid: str) -> dict[str, Any]:
    """What config.yml holds, in order: server, secret, uuid, tls, safe defaults, the user's options."""
    values: dict[str, Any] = {
        "server": f"{config.agent_host}:{config.probe_port}",
        "client_secret": config.agent.secret,
        "uuid": uuid,
        "tls": config.tls,
        "disable_command_execute": True,  # the dashboard's users must not get a root shell by default
        "disable_force_update": True,  # the pinned, checked agent stays what runs
        # Also no self-update at start: the real agent v2.3.3 without this runs its updater before it
        # connects (observed: offline it failed at once and enrolled in 0.11-0.14 s; online it would
        # replace the pinned binary). --agent-option disable_auto_update=false overrides it.
        "disable_auto_update": True,
        # The agent's log: without `debug` agent v2.3.3 logs nothing at all, not even a refused secret (its
        # logger is enabled by this switch alone); with it, only its connection, its failures and its tasks.
        # The run reads it to tell a refused secret (issue 17); --agent-option debug=false turns it off.
        "debug": True,
    }
    values.update(dict(config.agent.options))
    return values


def earlier_config(config: Config, uuid: str) -> str:
    """config.yml as versions before issue 17 wrote it (no `debug`): still what the settings ask for, so that
    a finished node's rerun after an upgrade of the tool sends no request."""
    values = agent_values(config, uuid)
    if "debug" not in dict(config.agent.options):
        values.pop("debug")
    return agent.render_config(values)


@dataclass(frozen=True)
class Plan:
    """What a v1/v2 run will do, as data: --dry-run prints it (V1Runner decides with the same functions)."""

    install: bool
    reason: str
    uuid: str
    uuid_source: str
    shown_config: str  # config.yml as it will be written, the agent secret replaced by a placeholder
    release: agent.Release
    action: str  # install; restart when a v1/v2 unit exists ("Init already exists"); replace a v0 unit
    config_text: str = field(repr=False)  # config.yml as it will be written: holds the agent secret
    on_disk: str | None = field(default=None, repr=False)  # config.yml as found

    def describe(self, paths: Paths, systemd: bool) -> list[str]:
        """Human lines for --dry-run."""
        lines = [f"plan: {'install the agent' if self.install else 'nothing to do'} ({self.reason})",
                 f"uuid {self.uuid} (from {self.uuid_source})"]
        if not self.install:
            return lines
        config = paths.agent_dir / "config.yml"
        lines += self.release.describe()
        lines.append(f"write {paths.agent_binary} (0755)")
        lines.append(f"write {config} (0600):")
        lines += [f"  {line}" for line in self.shown_config.splitlines()]
        if self.action == "replace":
            lines.append(f"uninstall the v0 agent: {shlex.join([str(paths.agent_binary), 'service', 'uninstall'])}")
        action = "install" if self.action == "replace" else self.action
        lines.append(f"run: {shlex.join(agent.service_argv(paths, action))}")
        lines.append(f"  cwd {paths.agent_dir}, stdin /dev/null, environment without NZ_*, NEZHA_TOKEN "
                     "and NEZHA_AGENT_SECRET")
        unit = f"{paths.agent_unit}: ExecStart" if systemd else f"{paths.agent_unit} or {paths.agent_openrc}: it"
        lines.append(f"verify {unit} runs the agent with -c {agent.CONFIG_TARGET}; "
                     f"config.yml as written" + ("; systemctl is-active nezha-agent" if systemd else ""))
        lines.append(f"write {paths.state_file} (0600): generation, uuid, machine-id (no secret)")
        return lines


SECRET_PLACEHOLDER = "<agent secret>"


def plan_enrollment(saved: State | None, config: Config, facts: Facts, paths: Paths, machine: str) -> Plan:
    """The v1/v2 plan from the settings, the saved state and what is on disk (reads, never writes)."""
    settings = config.agent
    ident = machine_identity(settings, facts, saved)
    version = settings.version or agent.AGENT_V1
    values = agent_values(config, ident.uuid)
    expected = agent.render_config(values)
    on_disk = _read(paths.agent_dir / "config.yml", paths.root)
    seen_on_disk = expected if on_disk == earlier_config(config, ident.uuid) else on_disk
    install, reason = decide(saved, config, facts, seen_on_disk, expected, paths, version)
    shown = agent.render_config({**values, "client_secret": SECRET_PLACEHOLDER})
    release = agent.Release(settings.base_url, version, agent.asset_name(machine), settings.sha256, settings.bundle)
    action = unit_action(paths)
    return Plan(install, reason, ident.uuid, ident.source, shown, release, action, expected, on_disk)


def unit_action(paths: Paths) -> str:
    """install where no unit is; restart a v1/v2 unit; replace (uninstall, then install) a v0 agent's unit:
    a restart would keep its `-s HOST:PORT -p SECRET` command (a dashboard upgraded from v0)."""
    unit = agent.installed_unit(paths)
    if unit is None:
        return "install"
    argv = (agent.read_exec_start(unit, paths.root) if unit == paths.agent_unit
            else agent.read_init_command(unit, paths.root))
    return "restart" if argv and argv[1:] == ["-c", agent.CONFIG_TARGET] else "replace"


def machine_identity(settings: AgentConfig, facts: Facts, saved: State | None) -> identity.Identity:
    """The uuid to enroll with: --uuid, else the state's for this machine-id, else derived from it."""
    if not settings.uuid:
        problem = identity.machine_id_problem(facts.machine_id)
        if problem:
            raise SettingsError([problem])
    if (not settings.uuid and saved and facts.machine_id and saved.machine_id == facts.machine_id
            and facts.instance_id and identity.unsealed_clone(saved.instance_id, facts.instance_id)):
        return identity.Identity(identity.instance_uuid(facts.machine_id, facts.instance_id),
                                 "machine-id and cloud-init instance-id: an unsealed clone")
    return identity.resolve(settings.uuid, facts.machine_id,
                            saved.machine_id if saved else None, saved.uuid if saved else None)


def decide(saved: State | None, config: Config, facts: Facts, on_disk: str | None, expected: str,
           paths: Paths, version: str) -> tuple[bool, str]:
    """Whether to (re)install, and why (pure but for the presence of the unit and binary)."""
    if saved is None or saved.generation in (None, "v0") or saved.uuid is None:
        return True, "not enrolled from this machine yet"
    if config.force:
        return True, "--force"
    if saved.machine_id != facts.machine_id:
        return True, "the machine-id changed: this clone enrolls under its own uuid"
    if identity.unsealed_clone(saved.instance_id, facts.instance_id):
        return True, "cloud-init's instance-id changed under the same machine-id: this clone enrolls under its own uuid"
    drift = agent.installed_drift(paths, "", saved.uuid, "", config.tls, None)
    if drift:
        return True, "; ".join(drift)
    if on_disk != expected:
        return True, "config.yml differs from the settings"
    if saved.agent_version != version or saved.installed_at is None:
        return True, "the agent version changed, or the install did not finish"
    if not same_dashboard(saved.dashboard_url, config.dashboard_url):
        # The dashboard keys servers by uuid, and config.yml (server, secret, uuid) is unchanged: on any URL of
        # the same dashboard the agent is the same server; a reinstall would only restart it.
        return False, (f"enrolled through {display_url(saved.dashboard_url)}, and the agent's config is the same: "
                       "its uuid is this server on any URL of the dashboard (the new URL is recorded)")
    return False, "enrolled and installed"


@dataclass
class V1Runner:
    """Performs a v1/v2 run (the edge): lock, decide, download, install, verify, save."""

    config: Config
    facts: Facts
    paths: Paths
    reporter: Reporter
    generation: Generation
    client: httpx.Client | None = None
    machine: str = field(default_factory=platform.machine)
    token_mode: bool = False  # an access token names the server (naming.py)

    @property
    def settings(self) -> AgentConfig:
        return self.config.agent

    def run(self) -> RunResult:
        """Lock, decide, install as needed, name the server in token mode; close the client made on the way."""
        given = self.client
        try:
            return self._run()
        finally:
            if self.client is not None and self.client is not given:
                self.client.close()
            self.client = given

    def _run(self) -> RunResult:
        redact.register(self.settings.secret)
        with state_mod.locked(self.paths, self.config.lock_timeout):
            saved = state_mod.load(self.paths)
            plan = plan_enrollment(saved, self.config, self.facts, self.paths, self.machine)
            install, reason = plan.install, plan.reason
            if saved and saved.machine_id == self.facts.machine_id and identity.unsealed_clone(
                    saved.instance_id, self.facts.instance_id):
                self.reporter.warn(identity.unsealed_note(saved.instance_id, self.facts.instance_id))
            if saved and saved.machine_id == self.facts.machine_id and identity.recorded_late(
                    saved.instance_id, self.facts.instance_id):
                self.reporter.warn(identity.recorded_late_note(self.facts.instance_id))
            self.reporter.info(f"plan: {'install the agent' if install else 'nothing to do'} ({reason})")
            self.reporter.info(f"  uuid {plan.uuid} (from {plan.uuid_source})")
            for warning in agent.override_warnings(self.paths, self.facts.environ):
                self.reporter.warn(warning)
            if install and plan.release.bundled is not None:  # missing: exit 2, altered: exit 5, nothing changed
                agent.check_bundled(plan.release)
            node = self._node_naming(plan.uuid)
            # The token is checked before anything is installed; a row older than this run can exist only
            # when this machine enrolled this uuid before (else a few small looks find the highest id).
            may_exist = not install or (saved is not None and saved.uuid == plan.uuid)
            saved_id = saved.server_id if saved is not None and saved.uuid == plan.uuid else None
            row = node.check(may_exist, saved_id) if node else None
            if node and install:
                node.preflight()  # its write scope and the group, before any download or enrollment
            details: dict[str, Any] = {}
            seen: online.Online | None = None  # pragma: no mutate - "" is as false: its readers ask `if seen`
            if install:
                self._before_changes(saved)
                # Before the agent starts: its log is read from where it ends now, its journal from this moment.
                watched = online.system_sources(self.paths, self.facts.systemd_running, time.time())
                adopted = self._install(plan)
                if adopted:
                    details["adopted_uuids"] = adopted
                presence = self._presence(node, row)
                seen = self._await_online(saved, plan, presence, watched)
                if presence is not None:  # the row as the wait saw it last, else the check's (or none: looked for)
                    row = presence.row or row
                self._save(saved, plan.uuid, plan.release.version, online_ok=True)
            else:
                self._warn_leftovers(agent.vendor_leftovers(self.paths))
                if saved and identity.recorded_late(saved.instance_id, self.facts.instance_id):
                    saved = dataclasses.replace(saved, instance_id=self.facts.instance_id)
                    state_mod.save(self.paths, saved)
                if saved and saved.dashboard_url != self.config.dashboard_url:
                    state_mod.save(self.paths, dataclasses.replace(saved, dashboard_url=self.config.dashboard_url,
                                                                   generation=self.generation.value))
            outcome = "installed" if install else "nothing_to_do"
            if node:
                details.update(self._name(node, row, restart=not install))
                self._remember_server_id(details["server_id"])
                if node.changed and not install:
                    outcome = "updated"
            # The node as the last run saw it: a plan to do nothing always has a saved state (`or True` is dead).
            last_seen = saved.online if saved else None  # pragma: no mutate - see above; test_run_v1 reads it
            return self._result(outcome, reason, plan.uuid, details, seen=seen, online=True if seen else last_seen)

    def _await_online(self, saved: State | None, plan: Plan, presence: V2Presence | None,
                      watched: online.Watched) -> online.Online:
        """The online wait: with an access token the dashboard's list (`presence`), always the agent's log and
        process. A verdict is saved with the install unfinished (the next run installs again) and raised."""
        config = self.config
        port = agentport.watch(config.probe_address, config.probe_port, config.tls,
                               config.ca_bundle)  # pragma: no mutate - a TLS port is NOTHING, verified or not
        # no credential reads the dashboard: the agent's own log (debug on) says it
        first: online.Source = presence if presence is not None else online.Reported(watched.log)
        sources = [first, port, *watched.sources]
        target = online.Target(config.probe_address, config.probe_port, config.tls)
        try:
            return online.await_online(online.Waiter(sources, target, config.online_timeout), self.reporter.step,
                                       self._stop_agent)
        except online.NotOnline:
            self.reporter.context.update(online=False, online_after_s=None, uuid=plan.uuid)
            self._save(saved, plan.uuid, plan.release.version, online_ok=False)
            raise

    def _presence(self, node: NodeNaming | None, row: dict[str, Any] | None) -> V2Presence | None:
        """With an access token, the dashboard's view of this node for the online wait."""
        if node is None:
            return None
        from nezha_bootstrap.v1.online import V2Presence

        return V2Presence(node.api, node.finder, row, warn=self.reporter.warn)

    def _node_naming(self, uuid: str) -> NodeNaming | None:
        if not self.token_mode:
            return None
        from nezha_bootstrap.v1.api import V2Api
        from nezha_bootstrap.v1.naming import NodeNaming

        assert self.config.token is not None  # token mode: run.token_names_server saw the access token
        api = V2Api(self._http(), self.config.dashboard_url, self.config.token, deadline=self.config.deadline,
                    notify=self.reporter.info)
        return NodeNaming(api, self.config, self.config.naming, self.reporter, uuid)

    def _name(self, node: NodeNaming, row: dict[str, Any] | None, restart: bool) -> dict[str, Any]:
        """Wait for our row (restarting an installed agent that has none), then apply the attributes."""
        if row is None and restart:
            self.reporter.info("the dashboard does not list this uuid: restarting the agent")
            self._service(agent.service_argv(self.paths, "restart"))
        if row is None:
            row = node.wait_for_row(lambda: self._stop_agent())
        return node.apply(row)

    def _stop_agent(self) -> None:
        self.reporter.info(f"stopping the agent: nezha-agent service -c {agent.CONFIG_TARGET} stop")
        self._service(agent.service_argv(self.paths, "stop"), quiet_failure=True)

    def _before_changes(self, saved: State | None) -> None:
        """What the v0 flow also does before it acts: prove the state file can be written (a read-only or
        full disk fails here, with nothing changed), and mark an installed agent unfinished until the new
        one verifies, so that a run stopped half-way (signal, crash) is redone, never taken for done."""
        state_mod.check_room(self.paths)
        if saved is not None and saved.uuid is not None and saved.installed_at is not None:
            state_mod.save(self.paths, dataclasses.replace(saved, installed_at=None))

    def _install(self, plan: Plan) -> list[str]:
        """Carry out the plan's install: binary, config.yml, the agent's `service` command, verification."""
        from nezha_bootstrap import system

        release, uuid, expected = plan.release, plan.uuid, plan.config_text
        with local_step(f"create the directory {self.paths.agent_dir}"):
            self.paths.agent_dir.mkdir(parents=True, exist_ok=True)
        with local_step(f"write {self.paths.agent_binary}"):
            binary = system.Staged(self.paths.agent_binary, 0o755)  # the binary streams into it, not memory
        try:
            with self.reporter.step("download", agent.obtaining(release)):
                self._download(release, binary)
            system.ensure_private_dir(self.paths.state_dir, self.paths.root)
            if plan.action == "replace" and self.paths.agent_binary.exists():
                self.reporter.info("replacing the v0 agent: nezha-agent service uninstall")
                self._service([str(self.paths.agent_binary), "service", "uninstall"], quiet_failure=True)
            with local_step(f"write {self.paths.agent_binary}"):
                binary.commit()
        finally:
            binary.discard()
        adopted = self._leftovers()
        old_uuid = (agent.config_uuid(self.paths.agent_dir / "config.yml", self.paths.root)
                    if plan.on_disk else None)  # pragma: no mutate - `or True`: none on disk, no uuid read either
        if old_uuid and old_uuid != uuid:
            self.reporter.warn(
                f"config.yml held uuid {old_uuid}; it now holds {uuid}. The dashboard keeps a server for "
                f"{old_uuid}: delete it there once its agent is gone"
            )
        with local_step(f"write {self.paths.agent_dir / 'config.yml'}"):
            system.atomic_write(self.paths.agent_dir / "config.yml", expected.encode(), mode=0o600)  # UTF-8
        action = "install" if plan.action == "replace" else plan.action
        if plan.action == "replace" and agent.installed_unit(self.paths):  # the old binary could not remove it
            self._service(agent.service_argv(self.paths, "uninstall"), quiet_failure=True)
        with self.reporter.step("install", f"nezha-agent service -c {agent.CONFIG_TARGET} {action}"):
            self._service(agent.service_argv(self.paths, action))
        with self.reporter.step("verify", f"verifying {agent.installed_unit(self.paths) or self.paths.agent_unit}"):
            problems = agent.unit_problems(self.paths, expected)
            if problems:
                raise InstallerFailed("the agent install is not as asked: " + "; ".join(problems))
            if self.facts.systemd_running:
                agent.wait_active(agent.is_active)
        return adopted

    def _download(self, release: agent.Release, binary: Staged) -> None:
        from nezha_bootstrap.http import make_download_client

        # Not the dashboard's client: the release host (GitHub, a mirror) is verified against the
        # system store plus --ca-bundle, the dashboard against --ca-bundle alone.
        with make_download_client(self.config.ca_bundle, urls=(release.checksums_url, release.asset_url)) as client, \
                local_step(f"write {self.paths.agent_binary}"):
            agent.fetch_binary(client, release, self.config.deadline, self.reporter.info, binary.file)

    def _service(self, argv: list[str], quiet_failure: bool = False) -> None:
        """Run one of the agent's `service` commands; a failure is InstallerFailed (or, quiet, a warning)."""
        Command(tuple(argv), cwd=self.paths.agent_dir, must_succeed=not quiet_failure, error=InstallerFailed,
                track=self.paths.child_file, confine=self.paths.root, environ=self.facts.environ,
                name=f"`nezha-agent service ... {argv[-1]}`").apply(self.reporter)

    def _leftovers(self) -> list[str]:
        found = agent.vendor_leftovers(self.paths)
        if not self.settings.adopt:
            self._warn_leftovers(found)
            return []
        adopted = []
        for leftover in found:
            if leftover.unit is not None:
                self._service(agent.service_argv(self.paths, "uninstall", leftover.config), quiet_failure=True)
                if leftover.unit.exists():  # its agent still runs from that config: removing it would orphan it
                    self.reporter.warn(
                        f"could not uninstall the vendor script's second agent {leftover.config.name} "
                        f"({leftover.unit.name} is still there): kept, a duplicate server (uuid {leftover.uuid}); "
                        "see the output with -v"
                    )
                    continue
            with local_step(f"remove {leftover.config}"):
                leftover.config.unlink(missing_ok=True)
            adopted.append(leftover.uuid or "(no uuid)")
            self.reporter.warn(
                f"adopted {leftover.config.name}: its agent is uninstalled; delete the server with uuid "
                f"{leftover.uuid} in the dashboard"
            )
        return adopted

    def _warn_leftovers(self, found: list[agent.Leftover]) -> None:
        for leftover in found:
            unit = leftover.unit.name if leftover.unit else "no unit"
            self.reporter.warn(
                f"the vendor script left a second agent: {leftover.config.name} (uuid {leftover.uuid}, {unit}), "
                "a duplicate server; run with --adopt to uninstall it"
            )

    def _http(self) -> httpx.Client:
        if self.client is None:
            from nezha_bootstrap.http import make_client

            self.client = make_client(self.config.ca_bundle, urls=(self.config.dashboard_url,))
        return self.client

    def _remember_server_id(self, server_id: int) -> None:
        """Keep the dashboard's id of this node's server in the state, so that a rerun finds the row with one
        small `?id=` look instead of the whole list (megabytes at 10,000 servers). Written only when new."""
        current = state_mod.load(self.paths)
        if current is not None and current.server_id != server_id:
            state_mod.save(self.paths, dataclasses.replace(current, server_id=server_id))

    def _save(self, saved: State | None, uuid: str, version: str, *, online_ok: bool) -> None:
        """The enrollment; installed only once the node was seen online (else the next run installs again)."""
        config = self.config
        when = state_mod.now()
        state_mod.save(self.paths, State(
            # The name is the node's to set only in token mode; otherwise the dashboard's two random words.
            dashboard_url=config.dashboard_url, name=config.name if self.token_mode else "", tag=None,
            probe_address=config.probe_address,
            probe_port=config.probe_port, tls=config.tls, secret="", machine_id=self.facts.machine_id,
            registered_at=saved.registered_at if saved and saved.uuid == uuid else when,
            installed_at=when if online_ok else None,
            generation=self.generation.value, uuid=uuid, method="direct", agent_version=version,
            instance_id=self.facts.instance_id, online=online_ok, online_at=when if online_ok else None,
            # the dashboard keeps a uuid's row (and id) across agent reinstalls
            server_id=saved.server_id if saved and saved.uuid == uuid else None,
        ))

    def _result(self, outcome: str, reason: str, uuid: str, details: dict[str, Any], *,
                seen: online.Online | None, online: bool | None) -> RunResult:
        naming_note = not self.token_mode
        if naming_note:
            details = {**details, "naming": NAMING_NOTE}
        return RunResult(outcome=outcome, generation=self.generation.value,
                         dashboard=display_url(self.config.dashboard_url), method="direct", reason=reason, uuid=uuid,
                         notes=(NAMING_NOTE,) if naming_note else (), details=details, online=online,
                         online_after_s=seen.seconds if seen else None)


def _read(path: Path, root: Path) -> str | None:
    from nezha_bootstrap.paths import read_under

    try:
        return read_under(root, path).decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _leftover_lines(paths: Paths, adopt: bool) -> list[str]:
    """What happens to the vendor script's second agents (config-*.yml): uninstalled with --adopt, else kept."""
    return [
        f"{'uninstall' if adopt else 'keep (no --adopt)'} the vendor script's second agent {leftover.config.name} "
        f"(uuid {leftover.uuid}): a duplicate server, to delete in the dashboard"
        for leftover in agent.vendor_leftovers(paths)
    ]


TOKEN_PLAN = (
    "with the access token: GET /api/v1/server before installing, then prove nezha:server:write with a PATCH "
    "that cannot write (a server id that is not a number) and read the groups when one is named; after the "
    "agent starts, wait for this "
    "uuid's row; then set name, notes, guest visibility and display index (full-form PATCH, read back), "
    "and join the group"
)


def run(this: ThisNode, generation: Generation, *, client: httpx.Client | None, token_mode: bool) -> RunResult:
    """A v1/v2 run: install the agent with the agent secret and a stable uuid; in token mode, name the server."""
    return V1Runner(this.config, this.facts, this.paths, this.reporter, generation, client=client,
                    token_mode=token_mode).run()


def dry_run(this: ThisNode, generation: Generation | None, saved: State | None, *, token_mode: bool) -> RunResult:
    """The v1/v2 plan (`generation` None: not probed yet); reads, never writes."""
    config, facts, paths, reporter = this.config, this.facts, this.paths, this.reporter
    plan = plan_enrollment(saved, config, facts, paths, platform.machine())
    for warning in agent.override_warnings(paths, facts.environ):
        reporter.warn(warning)
    lines = [f"generation: {generation.value}"] if generation else []
    lines += plan.describe(paths, facts.systemd_running) + _leftover_lines(paths, config.agent.adopt and plan.install)
    if token_mode:
        lines.append(TOKEN_PLAN)
    details = {"action": "install" if plan.install else "nothing", "config_yml": plan.shown_config}
    return RunResult(outcome="dry_run", generation=generation.value if generation else "auto",
                     dashboard=display_url(config.dashboard_url), method="direct", reason=plan.reason, uuid=plan.uuid,
                     plan=tuple(lines), details=details)
