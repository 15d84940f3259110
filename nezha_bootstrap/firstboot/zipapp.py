"""The tool as one zipapp on a node: where it lives, what pins it, and how user-data installs the tool.

`render cloud-init` either pins a zipapp (a URL and its SHA-256: the node's python3 fetches and
checks it, see templates/nezha-bootstrap-fetch) or, for those who host a wheel, runs pip. A local
`--pyz FILE` gives the hash to pin (render) or the file to copy into an image (install-service).
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union
from urllib.parse import urlsplit

from nezha_bootstrap.config import SHA256_RE, has_control_chars
from nezha_bootstrap.firstboot import render

PYZ = "/opt/nezha-bootstrap/nezha-bootstrap.pyz"  # the launcher (render.TOOL) runs it
MAX_PYZ_BYTES = 64 << 20  # the fetcher's cap too
ZIPAPP_OPTIONS = "--pyz-url, --pyz-sha256, --pyz"
PIP_OPTIONS = "--package, --pip-option"



@dataclass(frozen=True)
class Pinned:
    """The zipapp every node downloads from `url`, and the SHA-256 it must have."""

    url: str
    sha256: str


@dataclass(frozen=True)
class Pip:
    """`pip install` arguments: pip options, then the package spec."""

    args: tuple[str, ...]


Install = Union[Pinned, Pip]


def read_pyz(path: Path) -> bytes:
    """The bytes of a local zipapp; ValueError says why it is not one."""
    try:
        if path.stat().st_size > MAX_PYZ_BYTES:
            raise ValueError(f"--pyz {path}: larger than {MAX_PYZ_BYTES} bytes")
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"--pyz {path}: {exc.strerror or exc}") from None
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            archive.getinfo("__main__.py")
    except (zipfile.BadZipFile, KeyError):
        raise ValueError(f"--pyz {path}: not a zipapp (a zip file with a __main__.py), e.g. "
                         "dist/nezha-bootstrap-<version>-<arch>.pyz from packaging/build") from None
    return data


def describe_pyz(path: Path) -> str:
    """`--pyz FILE`'s size against the fetch cap, and for a bundle what it carries (read_pyz accepted it)."""
    from nezha_bootstrap import bundle

    data = path.read_bytes()
    line = f"--pyz {path}: {len(data):,} bytes (the node's fetch takes up to {MAX_PYZ_BYTES:,})"
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        try:
            manifest = archive.read(f"{bundle.PACKAGE}/{bundle.MANIFEST}")
        except KeyError:
            return line + "; the node downloads the agent from --agent-base-url"
    carried = bundle.parse_manifest(manifest.decode("utf-8", errors="replace"))
    return line + f"; a bundle carrying {carried.summary()}: the node downloads nothing else"


def choose(kind: str, *, package: str | None, pip_options: Sequence[str], pyz_url: str | None,
           pyz_sha256: str | None, pyz: str | None) -> tuple[Install | None, list[str]]:
    """How `render KIND` installs the tool (None: it does not), and what is wrong with the options."""
    zipapp = bool(pyz_url or pyz_sha256 or pyz)
    pip = bool(package or pip_options)
    if kind != "cloud-init":
        wrong = zipapp or pip
        return None, [f"{ZIPAPP_OPTIONS}, {PIP_OPTIONS} are for `render cloud-init` only"] if wrong else []
    if zipapp and pip:
        return None, [f"{ZIPAPP_OPTIONS} (the zipapp) and {PIP_OPTIONS} (pip) exclude each other: choose one"]
    if pip:
        return Pip((*pip_options, str(package))), render.install_problems(package, pip_options)
    if not zipapp:
        return None, ["render cloud-init needs --pyz-url URL with --pyz-sha256 HEX or --pyz FILE (the zipapp, "
                      "recommended), or --package SPEC (pip, for those who host a wheel)"]
    problems = url_problems(pyz_url)
    sha256 = _pinned_hash(pyz_sha256, pyz, problems)
    return Pinned(str(pyz_url), sha256), problems


def url_problems(url: str | None) -> list[str]:
    """What is wrong with the zipapp's download URL."""
    if not url:
        return ["--pyz-url is required: where every node downloads the zipapp"]
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return [f"--pyz-url {url!r} is not a valid URL"]
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return [f"--pyz-url {url!r} must be an http or https URL (http is fine: the hash is pinned)"]
    if any(ch.isspace() for ch in url) or has_control_chars(url):
        return [f"--pyz-url {url!r} must not hold spaces or control characters (percent-encode them)"]
    return []


def _pinned_hash(given: str | None, pyz: str | None, problems: list[str]) -> str:
    if given is not None and not SHA256_RE.match(given.lower()):
        problems.append(f"--pyz-sha256 {given!r} must be 64 hexadecimal digits (sha256sum's output)")
        return ""
    if pyz is None:
        if given is None:
            problems.append("the zipapp needs --pyz-sha256 HEX or --pyz FILE: the hash every node checks")
        return (given or "").lower()
    try:
        digest = hashlib.sha256(read_pyz(Path(pyz))).hexdigest()
    except ValueError as exc:
        problems.append(str(exc))
        return ""
    if given is not None and given.lower() != digest:
        problems.append(f"--pyz {pyz} has the SHA-256 {digest}, not --pyz-sha256 {given.lower()}")
    return digest


def document(kind: str, settings: str, install: Install | None, *, comments: bool = True,
             ca: str | None = None) -> str:
    """What `render KIND` prints (but for `systemd`), from the settings file's text and `choose`'s answer;
    `ca`: PEM certificates the user-data adds to the node's trust store."""
    if kind == "env":
        return settings
    if kind == "cloud-init-minimal":
        return render.cloud_init_minimal(settings, comments=comments, ca=ca)
    if isinstance(install, Pinned):
        return render.cloud_init_pyz(settings, install.url, install.sha256, comments=comments, ca=ca)
    if isinstance(install, Pip):
        return render.cloud_init(settings, list(install.args), comments=comments, ca=ca)
    raise ValueError(f"render {kind} needs a way to install the tool")
