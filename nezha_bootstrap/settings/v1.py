"""The v1/v2 settings: the agent secret, the release it installs, its options and identity, plaintext."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from nezha_bootstrap.identity import uuid_problem
from nezha_bootstrap.settings.address import (
    display_url,
    is_loopback_literal,
    is_public_host,
    is_valid_host,
    unpinned_http,
)
from nezha_bootstrap.settings.values import SHA256_RE, VERSION_RE

if TYPE_CHECKING:
    from nezha_bootstrap.bundle import Bundle
    from nezha_bootstrap.config import Config


# The agent's releases (dashboard-v1-v2.md): `{base}/v{version}/{asset}` and `{base}/v{version}/checksums.txt`.
# Here, not in agent.py, so that `--help` shows them without loading the installer's modules.
DEFAULT_AGENT_BASE_URL = "https://github.com/nezhahq/agent/releases/download"
AGENT_V1 = "2.3.3"  # newest v2 agent read for the reference; needs a dashboard >= v1.1.1
_AGENT_SECRET_RE = re.compile(r"^[0-9A-Za-z]{8,128}\Z")

# Agent config options a user may set (`--agent-option KEY=VALUE`): key -> type or (low, high).
_BOOL_OPTIONS = {
    "insecure_tls", "disable_command_execute", "disable_force_update", "disable_auto_update",
    "skip_connection_count", "skip_procs_count", "gpu", "temperature", "debug", "disable_nat",
    "disable_send_query", "use_ipv6_country_code", "use_gitee_to_upgrade",
}
_INT_OPTIONS = {"report_delay": (1, 4), "ip_report_period": (30, 86400 * 30)}
_TOOL_KEYS = {"server", "client_secret", "uuid", "tls"}


class AgentSettings:
    """The v1/v2 settings as click resolved them. A plain class, as AgentConfig."""

    def __init__(
        self,
        generation: str = "auto",  # auto | v0 | v1
        secret: str | None = None,
        secret_from_flag: bool = False,
        method: str | None = None,  # script | direct; unset: script for v0, direct for v1/v2
        base_url: str = DEFAULT_AGENT_BASE_URL,
        version: str | None = None,
        sha256: str | None = None,
        uuid: str | None = None,
        adopt: bool = False,
        allow_plaintext: bool = False,
        options: tuple[str, ...] = (),
        probe_port_given: bool = False,
        tls_given: bool = False,
        bundle: Bundle | None = None,  # the agents the bundle this tool runs from carries (bundle.carried())
    ) -> None:
        self.generation: Final = generation
        self.secret: Final = secret
        self.secret_from_flag: Final = secret_from_flag
        self.method: Final = method
        self.base_url: Final = base_url
        self.version: Final = version
        self.sha256: Final = sha256
        self.uuid: Final = uuid
        self.adopt: Final = adopt
        self.allow_plaintext: Final = allow_plaintext
        self.options: Final = options
        self.probe_port_given: Final = probe_port_given
        self.tls_given: Final = tls_given
        self.bundle: Final = bundle


class AgentConfig:
    """The validated v1/v2 settings. A plain class, its fields Final (never compared, hashed, replaced or
    printed; its default repr names no field, so never the secret): a frozen dataclass costs ~1 ms of every
    run's start."""

    def __init__(
        self,
        generation: str,
        secret: str,
        method: str | None,
        base_url: str,
        version: str | None,
        sha256: str | None,
        uuid: str | None,
        adopt: bool,
        allow_plaintext: bool,
        options: tuple[tuple[str, Any], ...],
        probe_port_given: bool,
        tls_given: bool,
        bundle: Bundle | None = None,
    ) -> None:
        self.generation: Final = generation
        self.secret: Final = secret
        self.method: Final = method
        self.base_url: Final = base_url
        self.version: Final = version
        self.sha256: Final = sha256
        self.uuid: Final = uuid
        self.adopt: Final = adopt
        self.allow_plaintext: Final = allow_plaintext
        self.options: Final = options
        self.probe_port_given: Final = probe_port_given
        self.tls_given: Final = tls_given
        self.bundle: Final = bundle

    @property
    def v0_direct(self) -> bool:
        """Whether a v0 dashboard gets the agent's own `service install`: --method direct, or a bundle unless
        --method says otherwise (install.sh would download the agent from GitHub). Only --method direct makes a
        run leave the plain v0 flow (`active`): a bundle's run with just an API token probes nothing."""
        return self.method == "direct" or (self.method is None and self.bundle is not None)

    @property
    def active(self) -> bool:
        """Whether this run leaves the plain v0 flow (an agent secret, --dashboard v1 or --method direct)."""
        return bool(self.secret) or self.generation == "v1" or self.method == "direct"


def validate_agent(raw: AgentSettings, problems: list[str], warnings: list[str]) -> AgentConfig:
    """Check the v1/v2 settings, appending every problem (pure)."""
    if raw.generation not in ("auto", "v0", "v1", "v2"):
        problems.append(f"--dashboard must be auto, v0, v1 or v2, got {raw.generation!r}")
    secret = (raw.secret or "").strip()
    if secret and not _AGENT_SECRET_RE.match(secret):
        problems.append("the agent secret must be 8 to 128 letters and digits (the dashboard's agent secret)")
    if secret and raw.secret_from_flag:
        warnings.append("--agent-secret puts the secret in the process list; use NEZHA_AGENT_SECRET_FILE instead")
    if raw.method not in (None, "script", "direct"):
        problems.append(f"--method must be script or direct, got {raw.method!r}")
    base = (raw.base_url or DEFAULT_AGENT_BASE_URL).rstrip("/")
    base_problem = _base_url_problem(base)
    if base_problem:
        problems.append(base_problem)
    version = (raw.version or "").strip().lstrip("v") or None
    if version and not VERSION_RE.match(version):
        problems.append(f"--agent-version must look like 2.3.3, got {raw.version!r}")
    sha = (raw.sha256 or "").strip().lower() or None
    if sha and not SHA256_RE.match(sha):
        problems.append("--agent-sha256 must be 64 hexadecimal digits")
    elif not sha and not base_problem and urlsplit(base).scheme == "http" \
            and not is_loopback_literal(str(urlsplit(base).hostname)):
        problems.append(unpinned_http("--agent-base-url", base, "--agent-sha256"))
    uuid = (raw.uuid or "").strip() or None
    if uuid and uuid_problem(uuid):
        problems.append(f"--uuid: {uuid_problem(uuid)}")
    problems.extend(_bundle_problems(raw.bundle, raw.method, version))
    return AgentConfig(
        generation="v1" if raw.generation == "v2" else raw.generation,  # v2 means "v1 or newer" too
        secret=secret, method=raw.method, base_url=base, version=version,
        sha256=sha, uuid=uuid, adopt=raw.adopt, allow_plaintext=raw.allow_plaintext,
        options=_options(raw.options, problems), probe_port_given=raw.probe_port_given, tls_given=raw.tls_given,
        bundle=raw.bundle,
    )


def _bundle_problems(bundle: Bundle | None, method: str | None, version: str | None) -> list[str]:
    """Settings a bundle cannot carry out: the vendor script (it downloads), a version it does not carry."""
    if bundle is None:
        return []
    problems = []
    if method == "script":
        problems.append("--method script runs the vendor's install.sh, which downloads the agent from GitHub; this "
                        "bundle carries the agent: drop --method (NEZHA_INSTALL_METHOD) or use the plain zipapp")
    if version and version not in bundle.versions():
        problems.append(f"--agent-version {version}: this bundle carries {bundle.summary()}")
    return problems


def _base_url_problem(base: str) -> str | None:
    """Why --agent-base-url cannot be the release base: http(s), a valid host and port, nothing else."""
    shown = display_url(base)
    try:
        parts = urlsplit(base)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return f"--agent-base-url {shown!r} must be an http(s) URL with a host and no query: it does not parse"
    credentials = parts.username is not None or parts.password is not None
    if parts.scheme not in ("http", "https") or not parts.hostname or not is_valid_host(parts.hostname) \
            or credentials or parts.query or parts.fragment:
        return f"--agent-base-url {shown!r} must be an http(s) URL with a host and no query, fragment or credentials"
    return None


def _options(raw: tuple[str, ...], problems: list[str]) -> tuple[tuple[str, Any], ...]:
    words = [word for value in raw for word in value.split()]
    options: dict[str, Any] = {}
    for word in words:
        key, eq, value = word.partition("=")
        if key in _TOOL_KEYS:
            problems.append(f"agent option {key} is set by the tool itself")
        elif key in _BOOL_OPTIONS and value in ("true", "false"):
            options[key] = value == "true"
        elif key in _INT_OPTIONS and value.isascii() and value.isdigit() and _in_range(int(value), _INT_OPTIONS[key]):
            options[key] = int(value)  # isascii: "²".isdigit() is true, and int("²") raises
        else:
            allowed = ", ".join(sorted(_BOOL_OPTIONS)) + " (=true|false); " + ", ".join(
                f"{k} (={lo}..{hi})" for k, (lo, hi) in sorted(_INT_OPTIONS.items()))
            problems.append(f"agent option {word!r} is not KEY=VALUE with a known key; allowed: {allowed}")
    return tuple(options.items())


def _in_range(value: int, bounds: tuple[int, int]) -> bool:
    return bounds[0] <= value <= bounds[1]


def v1_config(config: Config) -> Config:
    """In v1/v2 the agent talks gRPC on the web port: default the probe port and TLS from the URL."""
    parts = urlsplit(config.dashboard_url)
    changes: dict[str, Any] = {}
    if not config.agent.probe_port_given:
        changes["probe_port"] = parts.port or (443 if parts.scheme == "https" else 80)
    if not config.agent.tls_given:
        changes["tls"] = parts.scheme == "https"
    return config.replace(**changes)


def plaintext_problem(config: Config) -> str | None:
    """Why the v1/v2 agent must not connect as configured (its secret in clear text on a public net)."""
    if config.tls or not is_public_host(config.probe_address) or config.agent.allow_plaintext:
        return None
    why = "--no-tls" if config.agent.tls_given else "without TLS (the dashboard URL is http and no --tls was given)"
    return (
        f"the agent would connect to {config.probe_address} {why}, sending the agent secret in clear text "
        "over a public network; use TLS (--tls, or an https dashboard URL), or pass --allow-plaintext if you "
        "accept that"
    )
