"""The v0 settings: the API token (and a v2.1+ access token's shape), the install script and its mirror."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from nezha_bootstrap.settings.address import display_url, is_loopback_literal, unpinned_http
from nezha_bootstrap.settings.naming import is_access_token
from nezha_bootstrap.settings.values import SHA256_RE

if TYPE_CHECKING:
    from nezha_bootstrap.config import Settings
    from nezha_bootstrap.settings.v1 import AgentConfig


# nezhahq/scripts, branch v0, frozen at this commit: installs agent v0.20.5 (installer-v0.md).
DEFAULT_SCRIPT_URL = (
    "https://raw.githubusercontent.com/nezhahq/scripts/"
    "e61e10de579bcef7ec9bd1b94a38adcd427020ca/install_en.sh"
)
DEFAULT_SCRIPT_SHA256 = "254a352188027882e62cb377a629dc4aa09347486cb91cc341d4ef963d75b1d0"

# \Z, not $: `$` also matches before a trailing newline, which install.sh's eval would run.
SECRET_RE = re.compile(r"^[0-9A-Za-z]+\Z")
_TOKEN_RE = re.compile(r"^[\x21-\x7e]+\Z")  # one HTTP header value: visible ASCII, no spaces
ACCESS_TOKEN_RE = re.compile(r"^nzp_[0-9A-Za-z]{32}\Z")  # a v2.1+ personal access token (dashboard-v1-v2.md)


def validate_token(settings: Settings, agent: AgentConfig, problems: list[str], warnings: list[str]) -> str | None:
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


def validate_script(settings: Settings, problems: list[str], warnings: list[str]) -> tuple[str | None, str | None]:
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


def validate_mirror(raw: str | None, problems: list[str]) -> str | None:
    if raw is None or raw == "":
        return None
    if raw.lower() != "cn":
        problems.append(f"the mirror must be 'cn' or unset, got {raw!r}")
        return None
    return "cn"
