"""Where the dashboard is: its URL (checked, shown without credentials, compared), hosts and the probe target."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit, urlunsplit

from nezha_bootstrap.settings.values import plain_number

_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")


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


def validate_dashboard_url(raw: str | None, problems: list[str], warnings: list[str]) -> str | None:
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


def validate_probe_address(raw: str | None, url: str | None, problems: list[str]) -> str | None:
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


def validate_port(raw: str | int | None, problems: list[str]) -> int | None:
    port = plain_number(raw)
    if not isinstance(port, int) or not 1 <= port <= 65535:
        problems.append(f"the probe port must be a number from 1 to 65535, got {raw!r}")
        return None
    return port


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
