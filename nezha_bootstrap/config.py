"""The frozen, validated configuration of one run (pure: no environment, no disk, no network)."""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from nezha_bootstrap.errors import SettingsError
from nezha_bootstrap.identity import uuid_problem

if TYPE_CHECKING:
    from nezha_bootstrap.bundle import Bundle
    from nezha_bootstrap.facts import Facts  # facts.py loads socket: `--help` needs neither

# nezhahq/scripts, branch v0, frozen at this commit: installs agent v0.20.5 (installer-v0.md).
DEFAULT_SCRIPT_URL = (
    "https://raw.githubusercontent.com/nezhahq/scripts/"
    "e61e10de579bcef7ec9bd1b94a38adcd427020ca/install_en.sh"
)
DEFAULT_SCRIPT_SHA256 = "254a352188027882e62cb377a629dc4aa09347486cb91cc341d4ef963d75b1d0"
DEFAULT_PROBE_PORT = 5555
# The agent's releases (dashboard-v1-v2.md): `{base}/v{version}/{asset}` and `{base}/v{version}/checksums.txt`.
# Here, not in agent.py, so that `--help` shows them without loading the installer's modules.
DEFAULT_AGENT_BASE_URL = "https://github.com/nezhahq/agent/releases/download"
AGENT_V1 = "2.3.3"  # newest v2 agent read for the reference; needs a dashboard >= v1.1.1
AGENT_V0 = "0.20.5"  # the last agent a v0 dashboard speaks to (installer-v0.md)
DEFAULT_DEADLINE = 300.0
DEFAULT_LOCK_TIMEOUT = 60.0
DEFAULT_ONLINE_TIMEOUT = 60.0  # seconds a run waits for the dashboard to see the installed agent (issue 17)

# \Z, not $: `$` also matches before a trailing newline, which install.sh's eval would run.
SECRET_RE = re.compile(r"^[0-9A-Za-z]+\Z")
_TOKEN_RE = re.compile(r"^[\x21-\x7e]+\Z")  # one HTTP header value: visible ASCII, no spaces
ACCESS_TOKEN_RE = re.compile(r"^nzp_[0-9A-Za-z]{32}\Z")  # a v2.1+ personal access token (dashboard-v1-v2.md)
SHA256_RE = re.compile(r"^[0-9a-f]{64}\Z")  # a SHA-256 as sha256sum prints it
_AGENT_SECRET_RE = re.compile(r"^[0-9A-Za-z]{8,128}\Z")
VERSION_RE = re.compile(r"^\d{1,4}\.\d{1,4}\.\d{1,4}\Z")
DEFAULT_ENROLL_TIMEOUT = 120.0
_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")
_PLACEHOLDER_RE = re.compile(r"\{(hostname|ip|machine_id)\}")

# Agent v0.20.5 flags (installer-v0.md). Value: None for a switch, else a validator of its argument.
_SWITCHES = {
    "-d", "--debug", "--skip-conn", "--skip-procs", "--disable-command-execute",
    "--disable-auto-update", "--disable-force-update", "--use-ipv6-countrycode", "--gpu", "--gitee",
}
_VALUED = {"--report-delay": (1, 4), "-u": (1, 86400 * 30), "--ip-report-period": (1, 86400 * 30)}
# `service install` rewrites the unit from a fixed table and silently drops these.
_DROPPED = {"-k", "--insecure", "--disable-nat", "--disable-send-query", "--temperature"}


@dataclass(frozen=True)
class Settings:
    """Raw values as click resolved them from flags, environment and defaults."""

    dashboard_url: str | None = None
    token: str | None = None
    token_source: str | None = None  # NEZHA_TOKEN, --token or --token-file PATH: named in messages
    probe_address: str | None = None
    probe_port: str | int | None = DEFAULT_PROBE_PORT
    tls: bool = True
    name: str | None = None
    tag: str | None = None
    note: str | None = None
    hide_for_guest: bool = True
    agent_flags: tuple[str, ...] = ()
    script_url: str | None = None
    script_sha256: str | None = None
    mirror: str | None = None
    root: str = "/"
    deadline: float | str = DEFAULT_DEADLINE  # text from click: a bad value is one more collected problem
    lock_timeout: float | str = DEFAULT_LOCK_TIMEOUT
    online_timeout: float | str = DEFAULT_ONLINE_TIMEOUT
    ca_bundle: str | None = None
    force: bool = False
    agent: AgentSettings = field(default_factory=lambda: AgentSettings())
    naming: NamingSettings = field(default_factory=lambda: NamingSettings())


@dataclass(frozen=True)
class Config:
    """Everything one run needs, validated once."""

    dashboard_url: str
    token: str | None = field(repr=False)  # None: no token (a v1/v2 run with the agent secret alone)
    token_source: str  # where the token came from (NEZHA_TOKEN, --token, --token-file PATH), for messages
    probe_address: str
    probe_port: int
    tls: bool
    name: str
    tag: str | None
    note: str | None
    hide_for_guest: bool
    agent_flags: tuple[str, ...]
    script_url: str
    script_sha256: str | None
    mirror: str | None
    root: Path
    deadline: float
    lock_timeout: float
    ca_bundle: Path | None
    force: bool
    agent: AgentConfig
    naming: Naming
    online_timeout: float = DEFAULT_ONLINE_TIMEOUT  # seconds to wait for the node to show online

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


@dataclass(frozen=True)
class Validated:
    """A config and the warnings found while building it."""

    config: Config
    warnings: tuple[str, ...]


def build(settings: Settings, facts: Facts, problems: list[str] | None = None) -> Validated:
    """Validate `settings` against host `facts`; raise SettingsError listing every problem."""
    problems = list(problems or [])
    warnings: list[str] = []
    url = _dashboard_url(settings.dashboard_url, problems, warnings)
    agent = validate_agent(settings.agent, problems, warnings)
    naming = validate_naming(settings.naming, problems)
    token = _token(settings, agent, problems, warnings)
    probe = _probe_address(settings.probe_address, url, problems)
    port = _port(settings.probe_port, problems)
    name = _name(settings.name, facts, problems)
    tag = _optional_text("tag", settings.tag, problems)
    note = _optional_text("note", settings.note, problems)
    flags = _agent_flags(settings.agent_flags, problems)
    script_url, script_sha256 = _script(settings, problems, warnings)
    mirror = _mirror(settings.mirror, problems)
    deadline = _seconds("deadline", settings.deadline, problems)
    lock_timeout = _seconds("lock timeout", settings.lock_timeout, problems, allow_zero=True)
    online_timeout = _seconds("online timeout", settings.online_timeout, problems)
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
    checked = _dashboard_url(url, problems, warnings)
    return checked or "", _seconds("deadline", deadline, problems)


def display_url(url: str) -> str:
    """The URL without user-info, safe to print.

    Textual on purpose: it must also work on URLs that do not parse (a bad port, a broken IPv6
    literal) and on passwords holding '/', '?' or '#', where a parser would put the rest of the
    password in the path. Everything up to the last '@' after the scheme is masked.
    """
    if "@" not in url:
        return url
    # Only a scheme at the very start is kept ("http:u:pw@://" has no "://" before its '@').
    match = _SCHEME_PREFIX.match(url)
    prefix = match.group(0) if match else ""
    return f"{prefix}***@{url[len(prefix):].rpartition('@')[2]}"


_SCHEME_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:(//)?")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def same_dashboard(first: str, second: str) -> bool:
    """Whether two dashboard URLs are spellings of one URL (canonical_url); a host name and an address that
    it resolves to are not: telling those apart is the dashboard's answer, never DNS's (v0.flow adopts)."""
    return first == second or canonical_url(first) == canonical_url(second)


def canonical_url(url: str) -> str:
    """`url` in one spelling, for comparison only (never sent): scheme and host in lower case, a host's
    trailing dot dropped, IP literals normalised (an IPv4-mapped IPv6 as its IPv4), the scheme's default
    port dropped, the path's `//`, `.` and `..` resolved, unreserved %-escapes decoded and the others in
    upper case, no trailing slash. A URL that does not parse is its own spelling."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return url
    host = (parts.hostname or "").rstrip(".")
    try:
        address = ipaddress.ip_address(host)
        mapped = getattr(address, "ipv4_mapped", None)
        host = str(mapped or address)
    except ValueError:
        pass
    netloc = bracketed(host)
    if port is not None and port != _DEFAULT_PORTS.get(parts.scheme.lower()):
        netloc += f":{port}"
    return urlunsplit((parts.scheme.lower(), netloc, _canonical_path(parts.path), parts.query, ""))


def _canonical_path(path: str) -> str:
    segments: list[str] = []
    for segment in path.split("/"):
        segment = _PERCENT.sub(_unescape, segment)
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    return "/" + "/".join(segments) if segments else ""


_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")


def _unescape(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else f"%{match.group(1).upper()}"


def is_loopback_literal(host: str) -> bool:
    """True for a loopback IP literal (127.0.0.0/8, ::1), bracketed or not; a name never counts.

    `localhost`, `evil.localhost` or `localhost.` go to DNS on a resolver without nss-myhostname, and
    in a network whose DNS answered another address a served agent ran as root (issue 18).
    """
    try:
        return ipaddress.ip_address(host[1:-1] if host.startswith("[") and host.endswith("]") else host).is_loopback
    except ValueError:
        return False


def is_valid_host(host: str) -> bool:
    """A DNS host name, an IPv4 literal or an IPv6 literal: nothing a shell could misread."""
    if "%" in host:
        return False  # ipaddress accepts any text as an IPv6 zone id ("fe80::1%$(reboot)")
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    if all(label.isdigit() for label in labels):
        return False  # looks like a malformed IPv4 literal, not a name
    return all(_LABEL_RE.match(label) for label in labels)


def bracketed(host: str) -> str:
    """A host as HOST:PORT needs it: an IPv6 literal in brackets."""
    return f"[{host}]" if ":" in host else host


def has_control_chars(text: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" for ch in text)


def is_encodable(text: str) -> bool:
    """False for lone surrogates: how Python hands over environment bytes that are not UTF-8."""
    return not any("\ud800" <= ch <= "\udfff" for ch in text)


def _dashboard_url(raw: str | None, problems: list[str], warnings: list[str]) -> str | None:
    if not raw:
        problems.append("the dashboard URL is required (--dashboard-url or NEZHA_DASHBOARD_URL)")
        return None
    shown = display_url(raw)
    try:
        parts = urlsplit(raw.strip())
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        problems.append(f"the dashboard URL {shown!r} is not a valid URL")
        return None
    if parts.scheme not in ("http", "https") or not host:
        problems.append(f"the dashboard URL {shown!r} must be http:// or https:// with a host")
        return None
    if parts.username is not None or parts.password is not None:
        problems.append(
            f"the dashboard URL {shown!r} carries credentials; remove them "
            "(the API token goes in NEZHA_TOKEN or --token-file)"
        )
        return None
    if parts.query or parts.fragment:
        problems.append(f"the dashboard URL {shown!r} must not have a query or fragment")
        return None
    if not is_valid_host(host):
        problems.append(f"the dashboard URL's host {host!r} is not a valid host name or address")
        return None
    if parts.scheme == "http" and not is_loopback_literal(host):
        warnings.append(
            f"the dashboard URL {shown} is plain http to a non-loopback host: "
            "the API token and the node secret cross the network unencrypted"
        )
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def _token(settings: Settings, agent: AgentConfig, problems: list[str], warnings: list[str]) -> str | None:
    token, source = settings.token, settings.token_source or "NEZHA_TOKEN"
    if token is None and source.startswith("--token-file"):
        return None  # its file could not be read: that problem is already collected
    if not token and (agent.secret or agent.generation == "v1"):  # v1/v2 agents enroll with the secret alone
        return None
    if token == "" and source.startswith("--token-file"):
        path = source.split(" ", 1)[1]
        problems.append("stdin gave no token (--token-file -)" if path == "-" else f"the token file {path} is empty")
        return None
    if not token:
        problems.append("a credential is required: the v0 API token or a v2.1+ access token (NEZHA_TOKEN, or "
                        "--token-file FILE, '-' for stdin), or the v1/v2 agent secret (NEZHA_AGENT_SECRET, or "
                        "--agent-secret-file FILE)")
        return None
    problem = _token_problem(token, source)
    if problem:
        problems.append(problem)
        return None
    if source == "--token":
        warnings.append("--token puts the token in the process list; use NEZHA_TOKEN or --token-file instead")
    return token


def _token_problem(token: str, source: str) -> str | None:
    words = token.split()
    if len(words) == 2 and words[0].lower() in ("bearer", "token"):
        return f"the API token in {source} starts with {words[0]!r}: give the token alone, without that word"
    if not _TOKEN_RE.match(token):
        return f"the API token in {source} must be one word of visible ASCII characters"
    if is_access_token(token) and not ACCESS_TOKEN_RE.match(token):
        return "a v2.1+ access token is nzp_ followed by 32 letters and digits (the dashboard shows it once)"
    return None


def _probe_address(raw: str | None, url: str | None, problems: list[str]) -> str | None:
    if raw is None or raw == "":
        return urlsplit(url).hostname if url else None
    address = raw[1:-1] if raw.startswith("[") and raw.endswith("]") else raw
    if not is_valid_host(address):
        problems.append(
            f"the probe address {raw!r} must be a host name, an IPv4 or an IPv6 address "
            "(the installer passes it through eval)"
        )
        return None
    return address


# ASCII digits and nothing else: int() and float() also take "1_0", " 10 ", "+10" and "١٠" (Arabic-Indic
# digits), which no operator means as a port or a count of seconds.
_WHOLE_RE = re.compile(r"-?[0-9]+\Z")
_DECIMAL_RE = re.compile(r"[0-9]+(\.[0-9]+)?\Z")


def plain_number(raw: object, real: bool = False) -> float | int | None:
    """`raw` as an int (with `real`, a float) when it is written in plain ASCII digits (`real`: an
    optional `.digits`, no sign), or is such a number already; None otherwise."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int) or (real and isinstance(raw, float)):
        return raw if not isinstance(raw, float) or math.isfinite(raw) else None
    text = raw if isinstance(raw, str) else ""
    if real:
        return float(text) if _DECIMAL_RE.match(text) else None
    return int(text) if _WHOLE_RE.match(text) else None


def _port(raw: str | int | None, problems: list[str]) -> int | None:
    port = plain_number(raw)
    if not isinstance(port, int) or not 1 <= port <= 65535:
        problems.append(f"the probe port must be a number from 1 to 65535, got {raw!r}")
        return None
    return port


def _name(raw: str | None, facts: Facts, problems: list[str]) -> str | None:
    template = raw if raw else "{hostname}"
    values = {
        "hostname": facts.hostname,
        "ip": facts.primary_ipv4,
        "machine_id": facts.machine_id[:8] if facts.machine_id else None,
    }
    missing = sorted({m for m in _PLACEHOLDER_RE.findall(template) if not values[m]})
    if missing:
        problems.append(
            "the node name uses "
            + ", ".join("{" + m + "}" for m in missing)
            + " but this host has no value for it"
        )
        return None
    name = _PLACEHOLDER_RE.sub(lambda m: values[m.group(1)] or "", template)
    if has_control_chars(name):
        problems.append("the node name must not contain control characters (newlines, tabs, ...)")
        return None
    if not is_encodable(name):
        problems.append("the node name is not valid UTF-8 text")
        return None
    if not name.strip():
        problems.append("the node name is empty")
        return None
    return name


def _optional_text(what: str, raw: str | None, problems: list[str]) -> str | None:
    if raw is None:
        return None
    if has_control_chars(raw):
        problems.append(f"the {what} must not contain control characters")
        return None
    if not is_encodable(raw):
        problems.append(f"the {what} is not valid UTF-8 text")
        return None
    return raw


def split_agent_flags(values: tuple[str, ...]) -> list[str]:
    """Flags from repeated options and the space-separated env var, one item each."""
    words: list[str] = []
    for value in values:
        words.extend(value.split())
    return words


def _agent_flags(raw: tuple[str, ...], problems: list[str]) -> tuple[str, ...]:
    words = split_agent_flags(raw)
    flags: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        name, eq, value = word.partition("=")
        if name in ("--tls", "-s", "--server", "-p", "--password"):
            problems.append(f"agent flag {name} is set by the tool itself (use --tls/--no-tls, --probe-*)")
        elif name in _DROPPED:
            problems.append(f"agent flag {name} is refused: `service install` silently drops it from the unit")
        elif name in _SWITCHES and not eq:
            flags.append(name)
        elif name in _VALUED:
            if not eq:
                i += 1
                value = words[i] if i < len(words) else ""
            low, high = _VALUED[name]
            if value.isascii() and value.isdigit() and low <= int(value) <= high:
                flags.extend([name, value])
            else:
                problems.append(f"agent flag {name} needs a whole number from {low} to {high}, got {value!r}")
        else:
            problems.append(f"unknown agent flag {word!r}; allowed: " + ", ".join(sorted(_SWITCHES | set(_VALUED))))
        i += 1
    return tuple(flags)


def _script(settings: Settings, problems: list[str], warnings: list[str]) -> tuple[str | None, str | None]:
    url = settings.script_url or DEFAULT_SCRIPT_URL
    sha = (settings.script_sha256 or "").strip().lower() or None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        problems.append(f"the install script URL {display_url(url)!r} is not a valid URL")
        return None, None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        problems.append(f"the install script URL {display_url(url)!r} must be http:// or https:// with a host")
        return None, None
    if sha is not None and not SHA256_RE.match(sha):
        problems.append("the install script SHA-256 must be 64 hexadecimal digits")
        return None, None
    if url == DEFAULT_SCRIPT_URL and sha is None:
        sha = DEFAULT_SCRIPT_SHA256
    if parts.scheme == "http" and not is_loopback_literal(parts.hostname) and sha is None:
        problems.append(unpinned_http("the install script URL", url, "--script-sha256"))
        return None, None
    if sha is None:
        warnings.append(
            f"WARNING: the install script {display_url(url)} will run as root WITHOUT a hash check; "
            "pin it with --script-sha256"
        )
    if parts.scheme == "http" and not is_loopback_literal(parts.hostname):
        warnings.append(f"the install script is fetched over plain http from {parts.hostname}")
    return url, sha


def unpinned_http(what: str, url: str, pin: str) -> str:
    """The problem of a plain-http source of something that runs as root, with no hash to check it by.

    A loopback IP literal is exempt (nothing crosses a network; a name such as `localhost` is not, see
    `is_loopback_literal`); anything else could be swapped on the way, and a checksums.txt fetched
    over the same channel would be swapped with it.
    """
    return (
        f"{what} {display_url(url)} is plain http: what it serves would run as root unauthenticated. "
        f"Use https, or pin the SHA-256 with {pin}"
    )


def _mirror(raw: str | None, problems: list[str]) -> str | None:
    if raw is None or raw == "":
        return None
    if raw.lower() != "cn":
        problems.append(f"the mirror must be 'cn' or unset, got {raw!r}")
        return None
    return "cn"


def _seconds(what: str, raw: float | str, problems: list[str], allow_zero: bool = False) -> float:
    number = plain_number(raw, real=True)
    value = math.nan if number is None else float(number)
    if math.isnan(value) or value < 0 or (value == 0 and not allow_zero) or value > 86400:
        problems.append(f"the {what} must be a number of seconds up to 86400, got {raw!r}")
        return 0.0
    return value


# --- v1/v2: the agent secret, release and identity -----------------------------------------------

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
    base_url: str = DEFAULT_AGENT_BASE_URL
    version: str | None = None
    sha256: str | None = None
    uuid: str | None = None
    adopt: bool = False
    allow_plaintext: bool = False
    options: tuple[str, ...] = ()
    probe_port_given: bool = False
    tls_given: bool = False
    bundle: Bundle | None = None  # the agents the bundle this tool runs from carries (bundle.carried())


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
    bundle: Bundle | None = None

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


def is_public_host(host: str) -> bool:
    """True unless `host` is loopback or a private/link-local literal (names count as public)."""
    if is_loopback_literal(host):
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


def v1_config(config: Config) -> Config:
    """In v1/v2 the agent talks gRPC on the web port: default the probe port and TLS from the URL."""
    parts = urlsplit(config.dashboard_url)
    changes: dict[str, Any] = {}
    if not config.agent.probe_port_given:
        changes["probe_port"] = parts.port or (443 if parts.scheme == "https" else 80)
    if not config.agent.tls_given:
        changes["tls"] = parts.scheme == "https"
    return dataclasses.replace(config, **changes)


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


# --- v2.1+ token mode: naming the server ---------------------------------------------------------

def is_access_token(token: str | None) -> bool:
    """Whether the token is a v2.1+ personal access token (by its `nzp_` prefix)."""
    return bool(token) and str(token).startswith("nzp_")


@dataclass(frozen=True)
class NamingSettings:
    """The token-mode settings as click resolved them (text: validated below)."""

    public_note: str | None = None
    display_index: str | None = None
    group: str | None = None
    group_id: str | None = None
    create_group: bool = False
    enroll_timeout: str | float = DEFAULT_ENROLL_TIMEOUT


@dataclass(frozen=True)
class Naming:
    """The validated token-mode settings."""

    public_note: str | None = None
    display_index: int | None = None
    group: str | None = None
    group_id: int | None = None
    create_group: bool = False
    enroll_timeout: float = DEFAULT_ENROLL_TIMEOUT


def validate_naming(raw: NamingSettings, problems: list[str]) -> Naming:
    """Check the token-mode settings, appending every problem (pure; the token's shape is config.py's)."""
    public_note = raw.public_note
    if public_note is not None and (has_control_chars(public_note) or not is_encodable(public_note)):
        problems.append("the public note must be UTF-8 text without control characters")
    index = _whole(raw.display_index, "--display-index", problems, low=-(2 ** 31), high=2 ** 31 - 1)
    group_id = _whole(raw.group_id, "--group-id", problems, low=1, high=2 ** 63 - 1)
    group = raw.group if raw.group else None
    if group is not None and (has_control_chars(group) or not is_encodable(group)):
        problems.append("the group name must be UTF-8 text without control characters")
    if raw.create_group and not group:
        problems.append("--create-group needs --group NAME")
    if raw.create_group and group_id is not None:
        problems.append("--create-group makes a new group: it cannot go with --group-id")
    timeout = _whole(str(raw.enroll_timeout), "--enroll-timeout", problems, low=1, high=86400, real=True)
    return Naming(public_note=public_note, display_index=index, group=group, group_id=group_id,
                  create_group=raw.create_group,
                  enroll_timeout=DEFAULT_ENROLL_TIMEOUT if timeout is None else float(timeout))


def _whole(raw: str | None, what: str, problems: list[str], *, low: float, high: float,
           real: bool = False) -> Any:
    if raw is None or str(raw).strip() == "":
        return None
    value = plain_number(raw, real=real)
    if value is None or not low <= value <= high:
        kind = f"a number from {low:g} to {high:g}" if real else f"an integer from {int(low)} to {int(high)}"
        problems.append(f"{what} must be {kind}, got {raw!r}")
        return None
    return value
