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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from nezha_bootstrap import agent, identity, redact
from nezha_bootstrap import state as state_mod
from nezha_bootstrap.config import Config, display_url, is_loopback_host
from nezha_bootstrap.errors import DashboardUnreachable, InstallerFailed, SettingsError
from nezha_bootstrap.facts import Facts
from nezha_bootstrap.generation import Generation
from nezha_bootstrap.paths import Paths
from nezha_bootstrap.report import Reporter
from nezha_bootstrap.state import State

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
    if raw.method == "direct" and raw.generation == "v0":
        problems.append("--method direct for a v0 dashboard is not supported yet; use the script (the default)")
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
        raise SettingsError([
            f"--no-tls to {config.probe_address} sends the agent secret in clear text over a public network; "
            "use TLS, or pass --allow-plaintext if you accept that",
        ])
    return config


@dataclass(frozen=True)
class Plan:
    """What a v1/v2 run will do, as data."""

    install: bool
    reason: str
    uuid: str
    uuid_source: str
    config_text: str = field(repr=False)
    release: agent.Release | None


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
            adopted: list[str] = []
            if install:
                adopted = self._install(expected, version, on_disk, ident.uuid)
                self._save(saved, ident.uuid, version)
            else:
                self._warn_leftovers()
            return self._summary("installed" if install else "nothing_to_do", reason, ident.uuid, adopted)

    def _identity(self, saved: State | None) -> identity.Identity:
        if not self.settings.uuid:
            problem = identity.machine_id_problem(self.facts.machine_id)
            if problem:
                raise SettingsError([problem])
        return identity.resolve(self.settings.uuid, self.facts.machine_id,
                                saved.machine_id if saved else None, saved.uuid if saved else None)

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
                from nezha_bootstrap.bootstrap import _systemctl_is_active
                from nezha_bootstrap.installer import wait_active

                wait_active(_systemctl_is_active)
        return adopted

    def _download(self, release: agent.Release) -> bytes:
        client = self._http()
        deadline, notify = self.config.deadline, self.reporter.info
        checksums = agent.download(client, release.checksums_url, agent.CHECKSUMS_CAP, deadline, notify)
        listed = agent.parse_checksums(checksums.decode("utf-8", errors="replace"), release.asset)
        data = agent.download(client, release.asset_url, agent.ZIP_CAP, deadline, notify)
        agent.check_zip(data, release, listed)
        return agent.extract_binary(data)

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
            from nezha_bootstrap.dashboard import make_client

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
        if not self.generation.has_access_tokens or not self.config.token:
            summary["naming"] = NAMING_NOTE
        return summary


def _read(path: Any) -> str | None:
    try:
        return str(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return None


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
                   dry_run: bool = False) -> dict[str, Any] | None:
    """Run against a v1/v2 dashboard and return the summary; None when the dashboard is v0 (script flow)."""
    from nezha_bootstrap.dashboard import make_client

    clients: list[Any] = []

    def client_factory() -> Any:
        if not clients:
            clients.append(make_client(config.ca_bundle))
        return clients[0]

    saved = state_mod.load(paths, move_aside=not dry_run) if paths.state_file.exists() else None
    if dry_run and settings.generation == "auto" and not _cached(saved, config):
        return _dry_run(config, settings, None, reporter)
    generation = resolve_generation(settings, saved, config, client_factory, reporter)
    reporter.context.update(generation=generation.value, dashboard=display_url(config.dashboard_url))
    if generation.is_v0:
        _check_v0(config, settings)
        return None
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
        return _dry_run(config, settings, generation, reporter)
    runner = V1Runner(config, settings, facts, paths, reporter, generation, client=clients[0] if clients else None)
    summary = runner.run()
    reporter.result(f"{summary['outcome'].replace('_', ' ')}: uuid {summary['uuid']} on {summary['dashboard']} "
                    f"({generation.value})")
    if "naming" in summary:
        reporter.info(f"note: {summary['naming']}")
    return summary


def _cached(saved: State | None, config: Config) -> bool:
    return bool(saved and saved.dashboard_url == config.dashboard_url and (saved.generation or saved.secret))


def _check_v0(config: Config, settings: AgentConfig) -> None:
    if settings.method == "direct":
        raise SettingsError(["--method direct for a v0 dashboard is not supported yet; use the script (the default)"])
    if not config.token:
        raise SettingsError([
            "the dashboard is v0: it registers servers through its API token (NEZHA_TOKEN or --token-file); "
            "the agent secret is for v1/v2 dashboards",
        ])


def _dry_run(config: Config, settings: AgentConfig, generation: Generation | None,
             reporter: Reporter) -> dict[str, Any]:
    shown = display_url(config.dashboard_url)
    lines: list[str]
    if generation is None:
        lines = [f"detect the generation of {shown}: GET /api/v1/setting, POST /api/v1/server/register {{}}, "
                 "GET /api/v1/api-tokens (no credentials); v0 continues with the script flow"]
    else:
        version = settings.version or agent.AGENT_V1
        release = agent.Release(settings.base_url, version, agent.asset_name(platform.machine()), settings.sha256)
        lines = [
            f"generation: {generation.value}",
            f"download {display_url(release.checksums_url)} and {display_url(release.asset_url)}; check SHA-256"
            + (f" (pinned {settings.sha256})" if settings.sha256 else " against checksums.txt"),
            f"write {agent.CONFIG_TARGET} (0600): server {config.agent_host}:{config.probe_port}, "
            f"uuid from /etc/machine-id, tls {str(config.tls).lower()}, the agent secret",
            f"run: nezha-agent service -c {agent.CONFIG_TARGET} install (restart when the unit exists); "
            "environment without NZ_*",
        ]
    for line in lines:
        reporter.result(line)
    return {"outcome": "dry_run", "generation": generation.value if generation else "auto",
            "dashboard": shown, "plan": lines}
