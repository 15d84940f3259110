"""The frozen, validated configuration of one run (pure: no environment, no disk, no network)."""

from __future__ import annotations

import ipaddress
import math
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from nezha_bootstrap.errors import SettingsError

if TYPE_CHECKING:  # facts.py loads socket: `--help` needs neither
    from nezha_bootstrap.facts import Facts

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

# \Z, not $: `$` also matches before a trailing newline, which install.sh's eval would run.
SECRET_RE = re.compile(r"^[0-9A-Za-z]+\Z")
_TOKEN_RE = re.compile(r"^[\x21-\x7e]+\Z")  # one HTTP header value: visible ASCII, no spaces
ACCESS_TOKEN_RE = re.compile(r"^nzp_[0-9A-Za-z]{32}\Z")  # a v2.1+ personal access token (dashboard-v1-v2.md)
_SHA256_RE = re.compile(r"^[0-9a-f]{64}\Z")
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
    token_from_flag: bool = False
    token_optional: bool = False  # an agent secret was given: a v1/v2 run needs no API token
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
    ca_bundle: str | None = None
    dry_run: bool = False
    force: bool = False


@dataclass(frozen=True)
class Config:
    """Everything one run needs, validated once."""

    dashboard_url: str
    token: str = field(repr=False)
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
    dry_run: bool
    force: bool

    @property
    def register_url(self) -> str:
        return f"{self.dashboard_url}/api/v1/server/register?simple=true"

    @property
    def agent_host(self) -> str:
        """The probe address as the agent's `-s HOST:PORT` needs it (IPv6 in brackets)."""
        if ":" in self.probe_address:
            return f"[{self.probe_address}]"
        return self.probe_address

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
    token = _token(settings, problems, warnings)
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
    root = Path(settings.root or "/")
    if not root.is_absolute():
        problems.append(f"root must be an absolute path, got {settings.root!r}")
    if problems:
        raise SettingsError(problems)
    config = Config(
        dashboard_url=url or "",
        token=token or "",
        probe_address=probe or "",
        probe_port=port or 0,
        tls=settings.tls,
        name=name or "",
        tag=tag,
        note=note,
        hide_for_guest=settings.hide_for_guest,
        agent_flags=flags,
        script_url=script_url or "",
        script_sha256=script_sha256,
        mirror=mirror,
        root=root,
        deadline=deadline,
        lock_timeout=lock_timeout,
        ca_bundle=Path(settings.ca_bundle) if settings.ca_bundle else None,
        dry_run=settings.dry_run,
        force=settings.force,
    )
    return Validated(config, tuple(warnings))


def display_url(url: str) -> str:
    """The URL without user-info, safe to print.

    Textual on purpose: it must also work on URLs that do not parse (a bad port, a broken IPv6
    literal) and on passwords holding '/', '?' or '#', where a parser would put the rest of the
    password in the path. Everything up to the last '@' after the scheme is masked.
    """
    if "@" not in url:
        return url
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, sep, rest = url.partition(":")
        if not sep or not scheme.isalpha():
            scheme, sep, rest = "", "", url
    return f"{scheme}{sep}***@{rest.rpartition('@')[2]}"


def is_loopback_host(host: str) -> bool:
    """True for localhost names and loopback literals."""
    if host.lower() in ("localhost", "localhost.") or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
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
    if parts.scheme == "http" and not is_loopback_host(host):
        warnings.append(
            f"the dashboard URL {shown} is plain http to a non-loopback host: "
            "the API token and the node secret cross the network unencrypted"
        )
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def _token(settings: Settings, problems: list[str], warnings: list[str]) -> str | None:
    token = settings.token
    if not token and settings.token_optional:
        return None
    if not token:
        problems.append("the API token is required (NEZHA_TOKEN, or --token-file PATH, '-' for stdin)")
        return None
    if not _TOKEN_RE.match(token):
        problems.append("the API token must be one word of visible ASCII characters")
        return None
    if token.startswith("nzp_") and not ACCESS_TOKEN_RE.match(token):
        problems.append("a v2.1+ access token is nzp_ followed by 32 letters and digits (the dashboard shows it once)")
        return None
    if settings.token_from_flag:
        warnings.append(
            "--token puts the token in the process list; use NEZHA_TOKEN or --token-file instead"
        )
    return token


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


def _port(raw: str | int | None, problems: list[str]) -> int | None:
    try:
        port = int(str(raw).strip())
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
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
    if sha is not None and not _SHA256_RE.match(sha):
        problems.append("the install script SHA-256 must be 64 hexadecimal digits")
        return None, None
    if url == DEFAULT_SCRIPT_URL and sha is None:
        sha = DEFAULT_SCRIPT_SHA256
    if sha is None:
        warnings.append(
            f"WARNING: the install script {display_url(url)} will run as root WITHOUT a hash check; "
            "pin it with --script-sha256"
        )
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        warnings.append(f"the install script is fetched over plain http from {parts.hostname}")
    return url, sha


def _mirror(raw: str | None, problems: list[str]) -> str | None:
    if raw is None or raw == "":
        return None
    if raw.lower() != "cn":
        problems.append(f"the mirror must be 'cn' or unset, got {raw!r}")
        return None
    return "cn"


def _seconds(what: str, raw: float | str, problems: list[str], allow_zero: bool = False) -> float:
    try:
        value = float(str(raw).strip())
    except ValueError:
        value = math.nan
    if math.isnan(value) or value < 0 or (value == 0 and not allow_zero) or value > 86400:
        problems.append(f"the {what} must be a number of seconds up to 86400, got {raw!r}")
        return 0.0
    return value
