"""The frozen, validated configuration of one run (pure: no environment, no disk, no network).

Each concern validates its own settings (settings/: address, values, v0, v1, naming, agent_flags); `build`
is the one place that calls them all and collects every problem before any network."""

from __future__ import annotations

from dataclasses import FrozenInstanceError
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from nezha_bootstrap.errors import SettingsError
from nezha_bootstrap.record import replaced
from nezha_bootstrap.settings.address import (
    bracketed,
    canonical_url,
    display_url,
    is_loopback_literal,
    is_public_host,
    is_valid_host,
    same_dashboard,
    unpinned_http,
    validate_dashboard_url,
    validate_port,
    validate_probe_address,
)
from nezha_bootstrap.settings.agent_flags import split_agent_flags, validate_agent_flags
from nezha_bootstrap.settings.naming import (
    DEFAULT_ENROLL_TIMEOUT,
    Naming,
    NamingSettings,
    is_access_token,
    validate_name,
    validate_naming,
)
from nezha_bootstrap.settings.v0 import (
    ACCESS_TOKEN_RE,
    DEFAULT_SCRIPT_SHA256,
    DEFAULT_SCRIPT_URL,
    SECRET_RE,
    validate_mirror,
    validate_script,
    validate_token,
)
from nezha_bootstrap.settings.v1 import (
    AGENT_V1,
    DEFAULT_AGENT_BASE_URL,
    AgentConfig,
    AgentSettings,
    plaintext_problem,
    v1_config,
    validate_agent,
)
from nezha_bootstrap.settings.values import (
    SHA256_RE,
    VERSION_RE,
    has_control_chars,
    is_encodable,
    optional_text,
    plain_number,
    validate_seconds,
)

if TYPE_CHECKING:
    from nezha_bootstrap.facts import Facts  # facts.py loads socket: `--help` needs neither

# What the rest of the tool takes from here: the one Config and how it is built, and the settings/ names
# it has always imported from config.
__all__ = [
    "ACCESS_TOKEN_RE", "AGENT_V0", "AGENT_V1", "DEFAULT_AGENT_BASE_URL", "DEFAULT_DEADLINE", "DEFAULT_ENROLL_TIMEOUT",
    "DEFAULT_LOCK_TIMEOUT", "DEFAULT_ONLINE_TIMEOUT", "DEFAULT_PROBE_PORT", "DEFAULT_SCRIPT_SHA256",
    "DEFAULT_SCRIPT_URL", "SECRET_RE", "SHA256_RE", "VERSION_RE", "AgentConfig", "AgentSettings", "Config", "Naming",
    "NamingSettings", "Settings", "Validated", "bracketed", "build", "canonical_url", "check_target", "display_url",
    "has_control_chars", "is_access_token", "is_encodable", "is_loopback_literal", "is_public_host", "is_valid_host",
    "plain_number", "plaintext_problem", "same_dashboard", "split_agent_flags", "unpinned_http", "v1_config",
    "validate_agent", "validate_naming",
]

DEFAULT_PROBE_PORT = 5555
AGENT_V0 = "0.20.5"  # the last agent a v0 dashboard speaks to (installer-v0.md)
DEFAULT_DEADLINE = 300.0
DEFAULT_LOCK_TIMEOUT = 60.0
DEFAULT_ONLINE_TIMEOUT = 60.0  # seconds a run waits for the dashboard to see the installed agent (issue 17)


class Settings:
    """Raw values as click resolved them from flags, environment and defaults. A plain class, its fields Final
    (never compared, hashed, replaced or printed; its default repr names no field, so never the token): a
    frozen dataclass of 22 fields costs ~2 ms of every run's start."""

    def __init__(
        self,
        dashboard_url: str | None = None,
        token: str | None = None,
        token_source: str | None = None,  # NEZHA_TOKEN, --token or --token-file PATH: named in messages
        probe_address: str | None = None,
        probe_port: str | int | None = DEFAULT_PROBE_PORT,
        tls: bool = True,
        name: str | None = None,
        tag: str | None = None,
        note: str | None = None,
        hide_for_guest: bool = True,
        agent_flags: tuple[str, ...] = (),
        script_url: str | None = None,
        script_sha256: str | None = None,
        mirror: str | None = None,
        root: str = "/",
        deadline: float | str = DEFAULT_DEADLINE,  # text from click: a bad value is one more collected problem
        lock_timeout: float | str = DEFAULT_LOCK_TIMEOUT,
        online_timeout: float | str = DEFAULT_ONLINE_TIMEOUT,
        ca_bundle: str | None = None,
        force: bool = False,
        agent: AgentSettings | None = None,  # None: AgentSettings()
        naming: NamingSettings | None = None,  # None: NamingSettings()
    ) -> None:
        self.dashboard_url: Final = dashboard_url
        self.token: Final = token
        self.token_source: Final = token_source
        self.probe_address: Final = probe_address
        self.probe_port: Final = probe_port
        self.tls: Final = tls
        self.name: Final = name
        self.tag: Final = tag
        self.note: Final = note
        self.hide_for_guest: Final = hide_for_guest
        self.agent_flags: Final = agent_flags
        self.script_url: Final = script_url
        self.script_sha256: Final = script_sha256
        self.mirror: Final = mirror
        self.root: Final = root
        self.deadline: Final = deadline
        self.lock_timeout: Final = lock_timeout
        self.online_timeout: Final = online_timeout
        self.ca_bundle: Final = ca_bundle
        self.force: Final = force
        self.agent: Final = AgentSettings() if agent is None else agent
        self.naming: Final = NamingSettings() if naming is None else naming


class Config:
    """Everything one run needs, validated once. Frozen: a field cannot be set again (FrozenInstanceError, as a
    frozen dataclass raises; mypy refuses it before: the fields are Final); `replace` makes a changed copy.

    A plain class, not a dataclass (never compared, hashed or printed; its default repr names no field, so
    never the token): a frozen dataclass of 22 fields compiles six methods, ~2 ms of every run's start.
    """

    def __init__(
        self,
        dashboard_url: str,
        token: str | None,  # None: no token (a v1/v2 run with the agent secret alone)
        token_source: str,  # where the token came from (NEZHA_TOKEN, --token, --token-file PATH), for messages
        probe_address: str,
        probe_port: int,
        tls: bool,
        name: str,
        tag: str | None,
        note: str | None,
        hide_for_guest: bool,
        agent_flags: tuple[str, ...],
        script_url: str,
        script_sha256: str | None,
        mirror: str | None,
        root: Path,
        deadline: float,
        lock_timeout: float,
        ca_bundle: Path | None,
        force: bool,
        agent: AgentConfig,
        naming: Naming,
        online_timeout: float = DEFAULT_ONLINE_TIMEOUT,  # seconds to wait for the node to show online
    ) -> None:
        self.dashboard_url: Final = dashboard_url
        self.token: Final = token
        self.token_source: Final = token_source
        self.probe_address: Final = probe_address
        self.probe_port: Final = probe_port
        self.tls: Final = tls
        self.name: Final = name
        self.tag: Final = tag
        self.note: Final = note
        self.hide_for_guest: Final = hide_for_guest
        self.agent_flags: Final = agent_flags
        self.script_url: Final = script_url
        self.script_sha256: Final = script_sha256
        self.mirror: Final = mirror
        self.root: Final = root
        self.deadline: Final = deadline
        self.lock_timeout: Final = lock_timeout
        self.ca_bundle: Final = ca_bundle
        self.force: Final = force
        self.agent: Final = agent
        self.naming: Final = naming
        self.online_timeout: Final = online_timeout
        object.__setattr__(self, "_frozen", True)  # from here on nothing is set, not even a new attribute

    def __setattr__(self, name: str, value: object) -> None:
        if "_frozen" in self.__dict__:
            raise FrozenInstanceError(f"cannot assign to field {name!r}")
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def replace(self, **changes: Any) -> Config:
        """A copy with `changes` (as dataclasses.replace: every field passed to __init__ again)."""
        return replaced(self, **changes)

    @property
    def register_url(self) -> str:
        return f"{self.dashboard_url}/api/v1/server/register?simple=true"

    @property
    def agent_host(self) -> str:
        """The probe address as the agent's `-s HOST:PORT` needs it (IPv6 in brackets)."""
        return bracketed(self.probe_address)

    def register_body(self) -> dict[str, str]:
        """The JSON body of the register call: Name and only the fields that were set."""
        body = {"Name": self.name}
        if self.tag is not None:
            body["Tag"] = self.tag
        if self.note is not None:
            body["Note"] = self.note
        # Only the exact string "on" hides; any other string shows (dashboard-v0-register.md).
        body["HideForGuest"] = "on" if self.hide_for_guest else "off"
        return body


class Validated:
    """A config and the warnings found while building it. A plain class, as Settings."""

    def __init__(self, config: Config, warnings: tuple[str, ...]) -> None:
        self.config: Final = config
        self.warnings: Final = warnings


def build(settings: Settings, facts: Facts, problems: list[str] | None = None) -> Validated:
    """Validate `settings` against host `facts`; raise SettingsError listing every problem."""
    problems = list(problems or [])
    warnings: list[str] = []
    url = validate_dashboard_url(settings.dashboard_url, problems, warnings)
    agent = validate_agent(settings.agent, problems, warnings)
    naming = validate_naming(settings.naming, problems)
    token = validate_token(settings, agent, problems, warnings)
    probe = validate_probe_address(settings.probe_address, url, problems)
    port = validate_port(settings.probe_port, problems)
    name = validate_name(settings.name, facts, problems)
    tag = optional_text("tag", settings.tag, problems)
    note = optional_text("note", settings.note, problems)
    flags = validate_agent_flags(settings.agent_flags, problems)
    script_url, script_sha256 = validate_script(settings, problems, warnings)
    mirror = validate_mirror(settings.mirror, problems)
    deadline = validate_seconds("deadline", settings.deadline, problems)
    lock_timeout = validate_seconds("lock timeout", settings.lock_timeout, problems, allow_zero=True)
    online_timeout = validate_seconds("online timeout", settings.online_timeout, problems)
    root = Path(settings.root or "/")
    if not root.is_absolute():
        problems.append(f"root must be an absolute path, got {settings.root!r}")
    if problems:
        raise SettingsError(problems)
    assert url is not None and probe is not None and port is not None and name is not None and script_url is not None
    config = Config(
        dashboard_url=url, token=token, token_source=settings.token_source or "NEZHA_TOKEN", probe_address=probe,
        probe_port=port, tls=settings.tls, name=name, tag=tag, note=note, hide_for_guest=settings.hide_for_guest,
        agent_flags=flags, script_url=script_url, script_sha256=script_sha256, mirror=mirror, root=root,
        deadline=deadline, lock_timeout=lock_timeout, force=settings.force, agent=agent, naming=naming,
        online_timeout=online_timeout,
        ca_bundle=Path(settings.ca_bundle) if settings.ca_bundle else None,
    )
    # Known to be v1/v2 before any probe: refuse a plaintext agent secret now (auto: run.check_v1_settings).
    if agent.generation == "v1":
        plaintext = plaintext_problem(v1_config(config))
        if plaintext:
            raise SettingsError([plaintext])
    return Validated(config, tuple(warnings))


def check_target(url: str | None, deadline: str, problems: list[str], warnings: list[str]) -> tuple[str, float]:
    """`reconcile`'s dashboard URL and per-request deadline, checked as `run` checks them."""
    checked = validate_dashboard_url(url, problems, warnings)
    return checked or "", validate_seconds("deadline", deadline, problems)


