"""The `run` flow for v1/v2 dashboards: generation, stable uuid, direct agent install (dashboard-v1-v2.md).

A v1/v2 dashboard has no register API: the agent enrolls itself with a user's agent secret and its
own uuid. This flow picks the generation (probed once, then cached in the state), derives the uuid
from the machine-id, installs the pinned agent release with a config.yml holding both, and verifies.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import platform
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from nezha_bootstrap import agent, redact
from nezha_bootstrap.v1 import identity
from nezha_bootstrap import state as state_mod
from nezha_bootstrap.config import Config, display_url, is_loopback_host
from nezha_bootstrap.errors import DashboardUnreachable, InstallerFailed, SettingsError
from nezha_bootstrap.facts import Facts
from nezha_bootstrap.generation import PROBES, Generation
from nezha_bootstrap.paths import Paths
from nezha_bootstrap.report import Reporter
from nezha_bootstrap.state import State

if TYPE_CHECKING:
    from nezha_bootstrap.v1.naming import Naming, NodeNaming

_AGENT_SECRET_RE = re.compile(r"^[0-9A-Za-z]{8,128}\Z")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}\Z")
NAMING_NOTE = (
    "the dashboard named this server with two random words; naming it (and note, group, guest "
    "visibility) needs a v2.1+ access token, which this version does not use yet: rename it in the "
    "dashboard, matching the uuid"
)
# Agent config options a user may set (`--agent-option KEY=VALUE`): key -> type or (low, high).
_BOOL_OPTIONS = {
    "insecure_tls", "disable_command_execute", "disable_force_update", "disable_auto_update",
    "skip_connection_count", "skip_procs_count", "gpu", "temperature", "debug", "disable_nat",
    "disable_send_query", "use_ipv6_country_code", "use_gitee_to_upgrade",
}
_INT_OPTIONS = {"report_delay": (1, 4), "ip_report_period": (30, 86400 * 30)}
_TOOL_KEYS = {"server", "client_secret", "uuid", "tls"}


@dataclass(frozen=True)
class AgentSettings:
    """The v1/v2 settings as click resolved them."""

    generation: str = "auto"  # auto | v0 | v1
    secret: str | None = field(default=None, repr=False)
    secret_from_flag: bool = False
    method: str | None = None  # script | direct; unset: script for v0, direct for v1/v2
    base_url: str = agent.DEFAULT_BASE_URL
    version: str | None = None
    sha256: str | None = None
    uuid: str | None = None
    adopt: bool = False
    allow_plaintext: bool = False
    options: tuple[str, ...] = ()
    probe_port_given: bool = False
    tls_given: bool = False


@dataclass(frozen=True)
class AgentConfig:
    """The validated v1/v2 settings."""

    generation: str
    secret: str = field(repr=False)
    method: str | None
    base_url: str
    version: str | None
    sha256: str | None
    uuid: str | None
    adopt: bool
    allow_plaintext: bool
    options: tuple[tuple[str, Any], ...]
    probe_port_given: bool
    tls_given: bool

    @property
    def active(self) -> bool:
        """Whether this run leaves the plain v0 flow (an agent secret, --dashboard v1 or --method direct)."""
        return bool(self.secret) or self.generation == "v1" or self.method == "direct"


def validate(raw: AgentSettings, problems: list[str], warnings: list[str]) -> AgentConfig:
    """Check the v1/v2 settings, appending every problem (pure)."""
    if raw.generation not in ("auto", "v0", "v1"):
        problems.append(f"--dashboard must be auto, v0 or v1, got {raw.generation!r}")
    secret = (raw.secret or "").strip()
    if secret and not _AGENT_SECRET_RE.match(secret):
        problems.append("the agent secret must be 8 to 128 letters and digits (the dashboard's agent secret)")
    if secret and raw.secret_from_flag:
        warnings.append("--agent-secret puts the secret in the process list; use NEZHA_AGENT_SECRET_FILE instead")
    if raw.method not in (None, "script", "direct"):
        problems.append(f"--method must be script or direct, got {raw.method!r}")
    base = (raw.base_url or agent.DEFAULT_BASE_URL).rstrip("/")
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.query:
        problems.append(f"--agent-base-url {display_url(base)!r} must be an http(s) URL with a host and no query")
    version = (raw.version or "").strip().lstrip("v") or None
    if version and not agent.VERSION_RE.match(version):
        problems.append(f"--agent-version must look like 2.3.3, got {raw.version!r}")
    sha = (raw.sha256 or "").strip().lower() or None
    if sha and not _SHA256_RE.match(sha):
        problems.append("--agent-sha256 must be 64 hexadecimal digits")
    uuid = (raw.uuid or "").strip() or None
    if uuid and identity.uuid_problem(uuid):
        problems.append(f"--uuid: {identity.uuid_problem(uuid)}")
    return AgentConfig(
        generation=raw.generation, secret=secret, method=raw.method, base_url=base, version=version,
        sha256=sha, uuid=uuid, adopt=raw.adopt, allow_plaintext=raw.allow_plaintext,
        options=_options(raw.options, problems), probe_port_given=raw.probe_port_given, tls_given=raw.tls_given,
    )


def _options(raw: tuple[str, ...], problems: list[str]) -> tuple[tuple[str, Any], ...]:
    words = [word for value in raw for word in value.split()]
    options: dict[str, Any] = {}
    for word in words:
        key, eq, value = word.partition("=")
        if key in _TOOL_KEYS:
            problems.append(f"agent option {key} is set by the tool itself")
        elif key in _BOOL_OPTIONS and value in ("true", "false"):
            options[key] = value == "true"
        elif key in _INT_OPTIONS and value.isdigit() and _in_range(int(value), _INT_OPTIONS[key]):
            options[key] = int(value)
        else:
            allowed = ", ".join(sorted(_BOOL_OPTIONS)) + " (=true|false); " + ", ".join(
                f"{k} (={lo}..{hi})" for k, (lo, hi) in sorted(_INT_OPTIONS.items()))
            problems.append(f"agent option {word!r} is not KEY=VALUE with a known key; allowed: {allowed}")
    return tuple(options.items())


def _in_range(value: int, bounds: tuple[int, int]) -> bool:
    return bounds[0] <= value <= bounds[1]


def is_public_host(host: str) -> bool:
    """True unless `host` is loopback or a private/link-local literal (names count as public)."""
    if is_loopback_host(host):
        return False
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return True
    # Only the private-use and link-local ranges: Python's is_private also covers documentation nets.
    return not any(address in network for network in _PRIVATE_NETS if network.version == address.version)


_PRIVATE_NETS = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "fc00::/7", "fe80::/10",
))


def agent_values(config: Config, settings: AgentConfig, uuid: str) -> dict[str, Any]:
    """What config.yml holds, in order: server, secret, uuid, tls, safe defaults, the user's options."""
    values: dict[str, Any] = {
        "server": f"{config.agent_host}:{config.probe_port}",
        "client_secret": settings.secret,
        "uuid": uuid,
        "tls": config.tls,
        "disable_command_execute": True,  # the dashboard's users must not get a root shell by default
        "disable_force_update": True,  # the pinned, checked agent stays what runs
    }
    values.update(dict(settings.options))
    return values


def v1_config(config: Config, settings: AgentConfig) -> Config:
    """In v1/v2 the agent talks gRPC on the web port: default the probe port and TLS from the URL."""
    parts = urlsplit(config.dashboard_url)
    changes: dict[str, Any] = {}
    if not settings.probe_port_given:
        changes["probe_port"] = parts.port or (443 if parts.scheme == "https" else 80)
    if not settings.tls_given:
        changes["tls"] = parts.scheme == "https"
    config = dataclasses.replace(config, **changes)
    if not config.tls and is_public_host(config.probe_address) and not settings.allow_plaintext:
        why = "--no-tls" if settings.tls_given else "without TLS (the dashboard URL is http and no --tls was given)"
        raise SettingsError([
            f"the agent would connect to {config.probe_address} {why}, sending the agent secret in clear text "
            "over a public network; use TLS (--tls, or an https dashboard URL), or pass --allow-plaintext if you "
            "accept that",
        ])
    return config


@dataclass(frozen=True)
class Plan:
    """What a v1/v2 run will do, as data: --dry-run prints it (V1Runner decides with the same functions)."""

    install: bool
    reason: str
    uuid: str
    uuid_source: str
    shown_config: str  # config.yml as it will be written, the agent secret replaced by a placeholder
    release: agent.Release
    action: str  # install, or restart when the unit exists ("Init already exists")

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
        lines.append(f"run: {shlex.join(agent.service_argv(paths, self.action))}")
        lines.append(f"  cwd {paths.agent_dir}, stdin /dev/null, environment without NZ_*, NEZHA_TOKEN "
                     "and NEZHA_AGENT_SECRET")
        lines.append(f"verify {paths.agent_unit}: ExecStart runs the agent with -c {agent.CONFIG_TARGET}; "
                     f"config.yml as written" + ("; systemctl is-active nezha-agent" if systemd else ""))
        lines.append(f"write {paths.state_file} (0600): generation, uuid, machine-id (no secret)")
        return lines


SECRET_PLACEHOLDER = "<agent secret>"


def plan_enrollment(saved: State | None, config: Config, settings: AgentConfig, facts: Facts, paths: Paths,
                    machine: str) -> Plan:
    """The v1/v2 plan from the settings, the saved state and what is on disk (reads, never writes)."""
    ident = machine_identity(settings, facts, saved)
    version = settings.version or agent.AGENT_V1
    expected = agent.render_config(agent_values(config, settings, ident.uuid))
    on_disk = _read(paths.agent_dir / "config.yml")
    install, reason = decide(saved, config, facts, on_disk, expected, paths, version)
    shown = agent.render_config({**agent_values(config, settings, ident.uuid), "client_secret": SECRET_PLACEHOLDER})
    release = agent.Release(settings.base_url, version, agent.asset_name(machine), settings.sha256)
    action = "restart" if paths.agent_unit.exists() else "install"
    return Plan(install, reason, ident.uuid, ident.source, shown, release, action)


def machine_identity(settings: AgentConfig, facts: Facts, saved: State | None) -> identity.Identity:
    """The uuid to enroll with: --uuid, else the state's for this machine-id, else derived from it."""
    if not settings.uuid:
        problem = identity.machine_id_problem(facts.machine_id)
        if problem:
            raise SettingsError([problem])
    return identity.resolve(settings.uuid, facts.machine_id,
                            saved.machine_id if saved else None, saved.uuid if saved else None)


def decide(saved: State | None, config: Config, facts: Facts, on_disk: str | None, expected: str,
           paths: Paths, version: str) -> tuple[bool, str]:
    """Whether to (re)install, and why (pure but for the presence of the unit and binary)."""
    if saved is None or saved.generation in (None, "v0") or saved.uuid is None:
        return True, "not enrolled from this machine yet"
    if config.force:
        return True, "--force"
    if saved.dashboard_url != config.dashboard_url:
        return True, f"enrolled with another dashboard ({display_url(saved.dashboard_url)})"
    if saved.machine_id != facts.machine_id:
        return True, "the machine-id changed: this clone enrolls under its own uuid"
    if not paths.agent_binary.exists():
        return True, "the agent binary is gone"
    if not paths.agent_unit.exists():
        return True, "the agent unit is gone"
    if on_disk != expected:
        return True, "config.yml differs from the settings"
    if saved.agent_version != version or saved.installed_at is None:
        return True, "the agent version changed, or the install did not finish"
    return False, "enrolled and installed"


@dataclass
class V1Runner:
    """Performs a v1/v2 run (the edge): lock, decide, download, install, verify, save."""

    config: Config
    settings: AgentConfig
    facts: Facts
    paths: Paths
    reporter: Reporter
    generation: Generation
    client: Any = None
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    machine: str = field(default_factory=platform.machine)
    naming: Naming | None = None  # token mode (naming.py): an access token names the server

    def run(self) -> dict[str, Any]:
        """The --json summary of the run."""
        redact.register(self.settings.secret)
        version = self.settings.version or agent.AGENT_V1
        with state_mod.locked(self.paths, self.config.lock_timeout):
            saved = state_mod.load(self.paths)
            ident = self._identity(saved)
            expected = agent.render_config(agent_values(self.config, self.settings, ident.uuid))
            on_disk = _read(self.paths.agent_dir / "config.yml")
            install, reason = decide(saved, self.config, self.facts, on_disk, expected, self.paths, version)
            self.reporter.info(f"plan: {'install the agent' if install else 'nothing to do'} ({reason})")
            self.reporter.info(f"  uuid {ident.uuid} (from {ident.source})")
            for warning in agent.override_warnings(self.paths, self.environ):
                self.reporter.warn(warning)
            node = self._node_naming(ident.uuid)
            row = node.check() if node else None  # the token is checked before anything is installed
            adopted: list[str] = []
            if install:
                self._before_changes(saved)
                adopted = self._install(expected, version, on_disk, ident.uuid)
                self._save(saved, ident.uuid, version)
            else:
                self._warn_leftovers()
            summary = self._summary("installed" if install else "nothing_to_do", reason, ident.uuid, adopted)
            if node:
                summary.update(self._name(node, row, restart=not install))
                if node.changed and not install:
                    summary["outcome"] = "updated"
            return summary

    def _node_naming(self, uuid: str) -> NodeNaming | None:
        if self.naming is None:
            return None
        from nezha_bootstrap.v1.naming import NodeNaming
        from nezha_bootstrap.v1.api import V2Api

        api = V2Api(self._http(), self.config.dashboard_url, self.config.token, deadline=self.config.deadline,
                    notify=self.reporter.info)
        return NodeNaming(api, self.config, self.naming, self.reporter, uuid)

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

    def _identity(self, saved: State | None) -> identity.Identity:
        return machine_identity(self.settings, self.facts, saved)

    def _install(self, expected: str, version: str, on_disk: str | None, uuid: str) -> list[str]:
        from nezha_bootstrap import system

        release = agent.Release(self.settings.base_url, version, agent.asset_name(self.machine), self.settings.sha256)
        with self.reporter.step("download", f"downloading nezha-agent v{version} ({release.asset})"):
            binary = self._download(release)
        system.ensure_private_dir(self.paths.state_dir)
        self.paths.agent_dir.mkdir(parents=True, exist_ok=True)
        system.atomic_write(self.paths.agent_binary, binary, mode=0o755)
        adopted = self._leftovers()
        old_uuid = agent.config_uuid(self.paths.agent_dir / "config.yml") if on_disk else None
        if old_uuid and old_uuid != uuid:
            self.reporter.warn(
                f"config.yml held uuid {old_uuid}; it now holds {uuid}. The dashboard keeps a server for "
                f"{old_uuid}: delete it there once its agent is gone"
            )
        system.atomic_write(self.paths.agent_dir / "config.yml", expected.encode("utf-8"), mode=0o600)
        action = "restart" if self.paths.agent_unit.exists() else "install"
        with self.reporter.step("install", f"nezha-agent service -c {agent.CONFIG_TARGET} {action}"):
            self._service(agent.service_argv(self.paths, action))
        with self.reporter.step("verify", f"verifying {self.paths.agent_unit}"):
            problems = agent.unit_problems(self.paths, expected)
            if problems:
                raise InstallerFailed("the agent install is not as asked: " + "; ".join(problems))
            if self.facts.systemd_running:
                from nezha_bootstrap.v0.flow import _systemctl_is_active
                from nezha_bootstrap.v0.script import wait_active

                wait_active(_systemctl_is_active)
        return adopted

    def _download(self, release: agent.Release) -> bytes:
        from nezha_bootstrap.v0.api import make_download_client

        # Not the dashboard's client: the release host (GitHub, a mirror) is verified against the
        # system store plus --ca-bundle, the dashboard against --ca-bundle alone.
        with make_download_client(self.config.ca_bundle, urls=(release.checksums_url, release.asset_url)) as client:
            return agent.fetch_binary(client, release, self.config.deadline, self.reporter.info)

    def _service(self, argv: list[str], quiet_failure: bool = False) -> bool:
        from nezha_bootstrap import system

        try:
            done = system.run(argv, cwd=self.paths.agent_dir, env=agent.clean_env(self.environ),
                              timeout=agent.COMMAND_TIMEOUT, on_line=lambda line: self.reporter.detail(f"  | {line}"))
        except OSError as exc:
            raise InstallerFailed(f"cannot run {argv[0]}: {exc.strerror}") from exc
        if done.returncode == 0 and not done.timed_out:
            return True
        if quiet_failure:
            return False
        why = "timed out" if done.timed_out else f"exited with status {done.returncode}"
        last = done.output.strip().splitlines()[-1:] or [""]
        raise InstallerFailed(f"`nezha-agent service ... {argv[-1]}` {why}: {last[0][:200]}")

    def _leftovers(self) -> list[str]:
        found = agent.vendor_leftovers(self.paths)
        if not self.settings.adopt:
            self._warn_leftovers(found)
            return []
        adopted = []
        for leftover in found:
            if leftover.unit is not None:
                self._service(agent.service_argv(self.paths, "uninstall", leftover.config), quiet_failure=True)
            leftover.config.unlink(missing_ok=True)
            adopted.append(leftover.uuid or "(no uuid)")
            self.reporter.warn(
                f"adopted {leftover.config.name}: its agent is uninstalled; delete the server with uuid "
                f"{leftover.uuid} in the dashboard"
            )
        return adopted

    def _warn_leftovers(self, found: list[agent.Leftover] | None = None) -> None:
        for leftover in agent.vendor_leftovers(self.paths) if found is None else found:
            unit = leftover.unit.name if leftover.unit else "no unit"
            self.reporter.warn(
                f"the vendor script left a second agent: {leftover.config.name} (uuid {leftover.uuid}, {unit}), "
                "a duplicate server; run with --adopt to uninstall it"
            )

    def _http(self) -> Any:
        if self.client is None:
            from nezha_bootstrap.v0.api import make_client

            self.client = make_client(self.config.ca_bundle)
        return self.client

    def _save(self, saved: State | None, uuid: str, version: str) -> None:
        config = self.config
        when = state_mod.now()
        state_mod.save(self.paths, State(
            dashboard_url=config.dashboard_url, name="", tag=None, probe_address=config.probe_address,
            probe_port=config.probe_port, tls=config.tls, secret="", machine_id=self.facts.machine_id,
            registered_at=saved.registered_at if saved and saved.uuid == uuid else when, installed_at=when,
            generation=self.generation.value, uuid=uuid, method="direct", agent_version=version,
        ))

    def _summary(self, outcome: str, reason: str, uuid: str, adopted: list[str]) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "outcome": outcome, "reason": reason, "generation": self.generation.value, "uuid": uuid,
            "dashboard": display_url(self.config.dashboard_url), "method": "direct",
        }
        if adopted:
            summary["adopted_uuids"] = adopted
        if self.naming is None and (not self.generation.has_access_tokens or not self.config.token):
            summary["naming"] = NAMING_NOTE
        return summary


def _read(path: Any) -> str | None:
    try:
        return str(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return None


def v0_release(settings: AgentConfig, machine: str | None = None) -> agent.Release | None:
    """For `--method direct` on a v0 dashboard: the pinned v0 agent release (v0.20.5 unless overridden)."""
    if settings.method != "direct":
        return None
    asset = agent.asset_name(machine or platform.machine())
    return agent.Release(settings.base_url, settings.version or agent.AGENT_V0, asset, settings.sha256)


def resolve_generation(settings: AgentConfig, saved: State | None, config: Config, client_factory: Any,
                       reporter: Reporter) -> Generation:
    """--dashboard v0|v1, else the generation cached in the state for this URL, else the probes."""
    if settings.generation == "v0":
        return Generation.V0
    cached = saved.generation if saved and saved.dashboard_url == config.dashboard_url else None
    if saved and saved.dashboard_url == config.dashboard_url and cached is None and saved.secret:
        cached = Generation.V0.value  # a v0 state written before generations were recorded
    if settings.generation == "v1":
        return Generation(cached) if cached and cached != "v0" else Generation.V1
    if cached:
        return Generation(cached)
    from nezha_bootstrap.generation import detect, http_sender
    from nezha_bootstrap.retry import with_retries

    with reporter.step("detect", f"detecting the generation of {display_url(config.dashboard_url)}") as record:
        send = http_sender(client_factory(), config.dashboard_url)
        found = with_retries(lambda left: detect(send, left), deadline=config.deadline, what="generation detection",
                             give_up=DashboardUnreachable, notify=reporter.info)
        record["generation"] = found.value
    reporter.info(f"  dashboard generation: {found.value}")
    return found


def run_agent_flow(config: Config, settings: AgentConfig, facts: Facts, paths: Paths, reporter: Reporter,
                   dry_run: bool = False, naming: Naming | None = None) -> dict[str, Any] | None:
    """Run against a v1/v2 dashboard and return the summary; None when the dashboard is v0 (script flow).

    `naming`: the token-mode settings, used when the token is an access token (nzp_...).
    """
    clients: list[Any] = []

    def client_factory() -> Any:
        if not clients:
            from nezha_bootstrap.v0.api import make_client  # here: --dry-run never loads httpx

            clients.append(make_client(config.ca_bundle))
        return clients[0]

    saved = state_mod.load(paths, move_aside=not dry_run) if paths.state_file.exists() else None
    if dry_run and settings.generation == "auto" and not _cached(saved, config):
        return _dry_run(config, settings, None, reporter, saved=saved, facts=facts, paths=paths)
    generation = resolve_generation(settings, saved, config, client_factory, reporter)
    reporter.context.update(generation=generation.value, dashboard=display_url(config.dashboard_url))
    if generation.is_v0:
        _check_v0(config, settings)
        return None
    token_mode = _token_mode(config, generation)
    if not settings.secret:
        raise SettingsError([
            f"the dashboard is {generation.value}: agents enroll with an agent secret (the dashboard's "
            "install command shows it); set NEZHA_AGENT_SECRET_FILE or NEZHA_AGENT_SECRET",
        ])
    if settings.method == "script":
        raise SettingsError([
            f"--method script installs the v0 agent; a {generation.value} dashboard needs --method direct",
        ])
    config = v1_config(config, settings)
    if generation is Generation.V1_0 and not settings.version:
        reporter.warn("a v1.0.x dashboard needs an agent <= v1.0.x (agent v2 needs a dashboard >= v1.1.1); "
                      "if yours is v1.0.x, set --agent-version")
    if dry_run:
        summary = _dry_run(config, settings, generation, reporter, saved=saved, facts=facts, paths=paths)
        if token_mode:
            summary["plan"].append(TOKEN_PLAN)
            reporter.result(TOKEN_PLAN)
        return summary
    runner = V1Runner(config, settings, facts, paths, reporter, generation, client=clients[0] if clients else None,
                      naming=(naming or _default_naming()) if token_mode else None)
    summary = runner.run()
    reporter.result(f"{summary['outcome'].replace('_', ' ')}: uuid {summary['uuid']} on {summary['dashboard']} "
                    f"({generation.value})")
    if "naming" in summary:
        reporter.info(f"note: {summary['naming']}")
    return summary


def _cached(saved: State | None, config: Config) -> bool:
    return bool(saved and saved.dashboard_url == config.dashboard_url and (saved.generation or saved.secret))


TOKEN_PLAN = (
    "with the access token: GET /api/v1/server before installing; after the agent starts, wait for this "
    "uuid's row; then set name, notes, guest visibility and display index (full-form PATCH, read back), "
    "and join the group"
)


def _token_mode(config: Config, generation: Generation) -> bool:
    """Whether an access token names the server; refuses one on a dashboard without access tokens."""
    from nezha_bootstrap.v1.naming import is_access_token

    if not is_access_token(config.token):
        return False
    if generation in (Generation.V1_0, Generation.V1_5, Generation.V2_0):
        raise SettingsError([
            f"the dashboard is {generation.value}: access tokens (nzp_...) exist from v2.1.0, so this one cannot "
            "name the server. Drop NEZHA_TOKEN to enroll unnamed, and name it with `nezha-bootstrap reconcile`",
        ])
    return True


def _default_naming() -> Naming:
    from nezha_bootstrap.v1.naming import Naming

    return Naming()


def _check_v0(config: Config, settings: AgentConfig) -> None:
    if not config.token:
        raise SettingsError([
            "the dashboard is v0: it registers servers through its API token (NEZHA_TOKEN or --token-file); "
            "the agent secret is for v1/v2 dashboards",
        ])
    if config.token.startswith("nzp_"):
        raise SettingsError([
            "the dashboard is v0, and NEZHA_TOKEN holds a v2.1+ access token (nzp_...): "
            "use the v0 dashboard's API token instead",
        ])


def _dry_run(config: Config, settings: AgentConfig, generation: Generation | None, reporter: Reporter, *,
             saved: State | None, facts: Facts, paths: Paths) -> dict[str, Any]:
    """Print the plan: the probes when the generation is not known yet, then what a v1/v2 run does."""
    shown = display_url(config.dashboard_url)
    summary: dict[str, Any] = {"outcome": "dry_run", "generation": generation.value if generation else "auto",
                               "dashboard": shown}
    if generation is None:
        lines = [f"detect the generation of {shown}, without credentials:",
                 *(f"  {probe.method} {display_url(config.dashboard_url)}{probe.path}"
                   + (f" {probe.body.decode()}" if probe.body else "") for probe in PROBES),
                 "if it is v0: register with the API token and install the v0 agent "
                 "(`--dashboard v0 --dry-run` shows that plan)"]
        if not settings.secret:
            lines.append("if it is v1 or newer: it needs the agent secret (NEZHA_AGENT_SECRET_FILE); stop there")
            return _print_plan(reporter, summary, lines)
        lines.append("if it is v1 or newer:")
        config = v1_config(config, settings)
    else:
        lines = [f"generation: {generation.value}"]
    plan = plan_enrollment(saved, config, settings, facts, paths, platform.machine())
    for warning in agent.override_warnings(paths, os.environ):
        reporter.warn(warning)
    planned = plan.describe(paths, facts.systemd_running) + _leftover_lines(paths, settings.adopt and plan.install)
    lines += [f"  {line}" for line in planned] if generation is None else planned
    summary.update(action="install" if plan.install else "nothing", reason=plan.reason, uuid=plan.uuid,
                   config_yml=plan.shown_config)
    return _print_plan(reporter, summary, lines)


def _leftover_lines(paths: Paths, adopt: bool) -> list[str]:
    """What happens to the vendor script's second agents (config-*.yml): uninstalled with --adopt, else kept."""
    return [
        f"{'uninstall' if adopt else 'keep (no --adopt)'} the vendor script's second agent {leftover.config.name} "
        f"(uuid {leftover.uuid}): a duplicate server, to delete in the dashboard"
        for leftover in agent.vendor_leftovers(paths)
    ]


def _print_plan(reporter: Reporter, summary: dict[str, Any], lines: list[str]) -> dict[str, Any]:
    for line in lines:
        reporter.result(line)
    summary["plan"] = lines
    return summary
