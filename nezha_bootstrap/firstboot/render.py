"""Fill the first-boot templates: the unit, the settings file and cloud-init user-data (pure).

Every value is quoted for the format it lands in, so no name, note or token can break a document
or add a key: into YAML as a double-quoted scalar of ASCII only (a JSON string, with YAML's
\\U escape for characters beyond the BMP), into the settings file by systemd's EnvironmentFile=
rules. The templates are valid documents as they stand: a placeholder is a quoted YAML scalar
("@NAME@") or, in the settings file, a line of its own (@SETTINGS@).

Rendered text carries no comments unless asked (`comments=True`): user-data has a 16,384-byte limit
on EC2, and the files it writes are the same without them. Lines starting with "##" are about the
template itself (how to fill it by hand) and are never rendered.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Union

from nezha_bootstrap.config import has_control_chars, is_loopback_literal
from nezha_bootstrap.firstboot import KINDS as KINDS
from nezha_bootstrap.firstboot import USER_DATA_LIMIT as USER_DATA_LIMIT

UNIT_NAME = "nezha-bootstrap.service"
TOOL = "/opt/nezha-bootstrap/bin/nezha-bootstrap"  # where cloud-init installs it; the unit's ExecStart
UNIT_START_TIMEOUT = 20 * 60  # the unit's TimeoutStartSec=20min
TEMPLATES = {
    "systemd": "nezha-bootstrap.service",
    "env": "nezha-bootstrap.env",
    "cloud-init": "cloud-init-full.yaml",
    "cloud-init-minimal": "cloud-init-minimal.yaml",
    # The zipapp install: its user-data and the files it writes (install-service --pyz writes the launcher).
    "cloud-init-pyz": "cloud-init-pyz.yaml",
    "fetch": "nezha-bootstrap-fetch",
    "fetch-drop-in": "nezha-bootstrap-fetch.conf",
    "launcher": "nezha-bootstrap-launcher",
}

_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
_YAML_PLACEHOLDER_RE = re.compile(r'"@([A-Z_]+)@"')
_SETTINGS_LINE = "@SETTINGS@\n"
_ENV_ESCAPED = '"\\`$'  # the characters a backslash escapes inside systemd's (and sh's) double quotes
_SHORT_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}
MAX_CA_BYTES = USER_DATA_LIMIT  # a larger --ca-file could never fit
_PEM_BLOCK_RE = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL)

Filling = Union[str, Sequence[str]]


def template(kind: str) -> str:
    """The packaged template of `kind` (one of KINDS), as text."""
    from importlib import resources  # here: it loads tempfile, shutil and random, which `--help` does not need

    name = TEMPLATES[kind]
    return resources.files("nezha_bootstrap.firstboot").joinpath(f"templates/{name}").read_text(encoding="utf-8")


def unit(*, comments: bool = True) -> str:
    """nezha-bootstrap.service: it has no placeholders."""
    return without_comments(template("systemd"), keep=comments)


def without_comments(text: str, *, keep: bool = False) -> str:
    """`text` without its template lines ("##") and, unless `keep`, without its comment lines.

    The first line stays when it is "#!..." or "#cloud-config" (what runs or reads the file needs it);
    without comments, runs of blank lines become one. A comment is a whole line whose first non-blank
    character is "#" (in the unit, the settings file, YAML, the sh launcher and the Python fetcher
    alike; none of them holds such a line inside a string).
    """
    lines = text.splitlines(keepends=True)
    first = lines[:1] if lines and lines[0].startswith(("#!", "#cloud-config")) else []
    kept: list[str] = []
    for line in lines[len(first):]:
        stripped = line.lstrip()
        if stripped.startswith("##") or (not keep and stripped.startswith("#")):
            continue
        if not keep and not stripped and (not kept or not kept[-1].strip()):
            continue  # a blank line at the start or after another blank line
        kept.append(line)
    return "".join(first + kept)


def ca_certificates(text: str) -> str:
    """The PEM certificates of a --ca-file, each re-encoded; ValueError says why there are none or
    what else the file holds (a private key must never reach user-data)."""
    import ssl

    blocks = list(_PEM_BLOCK_RE.finditer(text))
    others = sorted({block.group(1) for block in blocks if block.group(1) != "CERTIFICATE"})
    if others:
        raise ValueError(f"it holds {', '.join(others)} besides certificates: give a file of CA certificates only")
    if not blocks:
        raise ValueError("it holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    certificates = []
    for block in blocks:
        try:
            der = ssl.PEM_cert_to_DER_cert(block.group(0))
            ssl.create_default_context(cadata=der)  # OpenSSL parses it as an X.509 certificate
        except (ssl.SSLError, ValueError) as exc:
            raise ValueError(f"a certificate in it cannot be read ({exc})") from None
        certificates.append(ssl.DER_cert_to_PEM_cert(der))
    return "".join(certificates)


def with_ca(user_data: str, certificates: str | None) -> str:
    """`user_data` with cloud-init's ca_certs: the certificates join the node's system trust store,
    which the tool, the fetcher and the agent all use."""
    if not certificates:
        return user_data
    block = f"ca_certs:\n  trusted:\n    - {yaml_string(certificates)}\n"
    head, sep, tail = user_data.partition("\nwrite_files:\n")
    if not sep:
        raise ValueError("the user-data template has no write_files: key")
    return head + "\n" + block + "write_files:\n" + tail


def size_problem(user_data: str, parts: Mapping[str, int]) -> str | None:
    """Why `user_data` is too large for EC2, naming `parts` (what the user may drop: bytes each)."""
    size = len(user_data.encode("utf-8"))
    if size <= USER_DATA_LIMIT:
        return None
    largest = sorted(((n, name) for name, n in parts.items() if n > 0), reverse=True)
    drop = "; ".join(f"{name} ({n:,} bytes)" for n, name in largest) or "nothing of yours is large"
    return (f"the user-data is {size:,} bytes, over EC2's limit of {USER_DATA_LIMIT:,} by "
            f"{size - USER_DATA_LIMIT:,}: drop or shorten {drop}; or give --no-size-limit for a cloud that "
            "takes more")


def yaml_string(value: str) -> str:
    """`value` as a YAML double-quoted scalar of printable ASCII (a JSON string where JSON can say it).

    ASCII only, because YAML folds a literal U+0085, U+2028 or U+2029 into a space and refuses
    other non-printable characters; characters beyond the BMP use YAML's \\U escape, since PyYAML
    (which cloud-init uses) does not join JSON's surrogate pairs.
    """
    _refuse_unencodable(value)
    return '"' + "".join(_yaml_char(ch) for ch in value) + '"'


def _yaml_char(ch: str) -> str:
    code = ord(ch)
    if ch in '"\\':
        return "\\" + ch
    if 0x20 <= code < 0x7F:
        return ch
    if ch in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[ch]
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def env_value(value: str) -> str:
    """`value` in double quotes by systemd's EnvironmentFile= rules (a POSIX shell reads it the same).

    Inside double quotes systemd keeps every character verbatim, newlines included, except that a
    backslash before one of " \\ ` $ escapes it; those four are escaped, nothing else is.
    """
    _refuse_unencodable(value)
    if "\x00" in value:
        raise ValueError("a settings value cannot hold a NUL character")
    escaped = "".join("\\" + ch if ch in _ENV_ESCAPED else ch for ch in value)
    return f'"{escaped}"'


def _refuse_unencodable(value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("a value is not valid Unicode text (a lone surrogate)") from None


def env_file(assignments: Sequence[tuple[str, str]], *, comments: bool = True) -> str:
    """The settings file: the template's comments (if `comments`), then one NAME="VALUE" line per assignment."""
    lines = []
    for name, value in assignments:
        if not _ENV_NAME_RE.match(name):
            raise ValueError(f"{name!r} is not a valid environment variable name")
        lines.append(f"{name}={env_value(value)}\n")
    text = without_comments(template("env"), keep=comments)
    if text.count(_SETTINGS_LINE) != 1:
        raise ValueError("the settings file template must hold exactly one @SETTINGS@ line")
    return text.replace(_SETTINGS_LINE, "".join(lines))


def cloud_init(settings: str, install: Sequence[str], *, comments: bool = True, ca: str | None = None) -> str:
    """Full user-data: `settings` (the settings file's text) and the unit in write_files; `install`
    (pip options, then the package spec) as the arguments of `pip install` in runcmd; `ca`: PEM
    certificates for the node's trust store."""
    if not install:
        raise ValueError("pip install needs at least the package spec")
    text = fill(template("cloud-init"), {"ENV_FILE": settings, "UNIT": unit(comments=comments),
                                         "PIP_ARGS": list(install)})
    return with_ca(without_comments(text, keep=comments), ca)


def launcher(*, comments: bool = True) -> str:
    """The script at TOOL that runs the zipapp with the system's python3, isolated (-I)."""
    return without_comments(template("launcher"), keep=comments)


def cloud_init_pyz(settings: str, url: str, sha256: str, *, comments: bool = True, ca: str | None = None) -> str:
    """Zipapp user-data: `settings`, the unit and a drop-in whose ExecStartPre fetches the zipapp from
    `url` and checks it against `sha256` (the fetcher is in write_files too), and the launcher."""
    pinned = json.dumps({"url": url, "sha256": sha256}) + "\n"
    files = {"FETCHER": "fetch", "DROP_IN": "fetch-drop-in"}
    text = fill(template("cloud-init-pyz"), {
        "ENV_FILE": settings, "PYZ_SOURCE": pinned, "LAUNCHER": launcher(comments=comments),
        "UNIT": unit(comments=comments),
        **{name: without_comments(template(kind), keep=comments) for name, kind in files.items()},
    })
    return with_ca(without_comments(text, keep=comments), ca)


def cloud_init_minimal(settings: str, *, comments: bool = True, ca: str | None = None) -> str:
    """Minimal user-data: only `settings` (the settings file's text) in write_files."""
    return with_ca(without_comments(fill(template("cloud-init-minimal"), {"ENV_FILE": settings}), keep=comments), ca)


def fill(text: str, values: Mapping[str, Filling]) -> str:
    """Replace each "@NAME@" YAML scalar with values[NAME]: a string becomes one quoted scalar, a list
    the quoted scalars joined by ", " (it must stand in a flow sequence). Every placeholder must be
    given and every value used."""
    used = set()

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise ValueError(f"the template has a placeholder @{name}@ that nothing fills")
        used.add(name)
        value = values[name]
        if isinstance(value, str):
            return yaml_string(value)
        return ", ".join(yaml_string(item) for item in value)

    # Comments are left alone: they may name a placeholder, and no value belongs in them.
    filled = "".join(line if line.lstrip().startswith("#") else _YAML_PLACEHOLDER_RE.sub(replace, line)
                     for line in text.splitlines(keepends=True))
    unused = sorted(set(values) - used)
    if unused:
        raise ValueError(f"the template has no placeholder for {', '.join(unused)}")
    return filled


def install_problems(package: str | None, pip_options: Sequence[str]) -> list[str]:
    """What is wrong with the package spec and the pip options of the full user-data."""
    problems = []
    if not package or not package.strip():
        problems.append("render cloud-init needs --package (an index name such as nezha-bootstrap==X.Y, "
                        "a wheel URL or a path on the server)")
    elif package.startswith("-") or has_control_chars(package):
        problems.append(f"--package {package!r} must be a package spec, not an option, without control characters")
    for option in pip_options:
        if not option.startswith("-") or has_control_chars(option):
            problems.append(f"--pip-option {option!r} must be a pip option (starting with '-'), "
                            "without control characters")
    return problems + _plain_http_problems(package, pip_options)


def _plain_http_problems(package: str | None, pip_options: Sequence[str]) -> list[str]:
    """pip runs what it fetches as root at first boot: a plain-http source needs a pinned hash."""
    if "--require-hashes" in pip_options:
        return []
    sources = [word for word in (package or "", *pip_options) if _unpinned_http(word)]
    return [f"{word!r} is fetched over plain http and would run as root unchecked: use https, or pin it "
            "(a wheel URL ending #sha256=HEX, or --pip-option=--require-hashes)" for word in sources]


def _unpinned_http(word: str) -> bool:
    from urllib.parse import urlsplit

    url = word.split("=", 1)[1] if word.startswith("-") and "=" in word else word
    if not url.lower().startswith("http://") or "#sha256=" in url:
        return False
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return True
    return not is_loopback_literal(host)




def timeout_warning(deadline: float, lock_timeout: float, online_timeout: float = 60.0) -> str | None:
    """A warning when one run may outlast the unit's TimeoutStartSec with these settings."""
    # register, download, install.sh; old agent 60 s, start 15 s; then the wait for the node to show online
    longest = lock_timeout + 3 * deadline + 75 + online_timeout
    if longest <= UNIT_START_TIMEOUT:
        return None
    return (
        f"with a {deadline:g} s deadline one run may take {longest:g} s, longer than the unit's "
        f"TimeoutStartSec ({UNIT_START_TIMEOUT} s): add a drop-in with a larger TimeoutStartSec="
    )
