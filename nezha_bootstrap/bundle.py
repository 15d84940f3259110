"""The offline bundle: a zipapp that carries the agent release zips, each pinned by its SHA-256.

Inside the zipapp, beside the tool, the package `nezha_bootstrap_bundle` holds `manifest.json` and
`v<version>/nezha-agent_linux_<arch>.zip` (the layout of --agent-base-url). `write` makes a bundle from
a zipapp and such a tree, taking a zip only when its hash matches the release's checksums.txt;
`carried` reads the manifest of the bundle this tool runs from (None for the plain zipapp and the
installed tool); `agent_zip` reads one zip back, checked against the hash pinned when it was bundled.

What authenticates what: the user-data pins the bundle's SHA-256, so the node gets the bundle, and
with it the manifest and every zip, exactly as the operator built it. checksums.txt only shows that
the operator's one download was not broken (it comes from the same host as the zips).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast

from nezha_bootstrap.agent import AGENT_V0, AGENT_V1, ARCHES, parse_checksums
from nezha_bootstrap.config import SHA256_RE, VERSION_RE
from nezha_bootstrap.errors import InstallerFailed, InternalError, SettingsError

if TYPE_CHECKING:  # zipfile is loaded where a bundle is written or read: `run --dry-run` without one never loads it
    import zipfile
    from importlib.abc import Traversable

    Member = tuple[zipfile.ZipInfo, bytes]

PACKAGE = "nezha_bootstrap_bundle"
MANIFEST = "manifest.json"
FORMAT = 1
ASSET_RE = re.compile(r"^nezha-agent_linux_([a-z0-9]+)\.zip\Z")
INIT = b'"""The agent release zips this bundle carries (see nezha_bootstrap/bundle.py)."""\n'
# psutil's wheel tag in the zipapp names the architecture it runs on: `uname -m` words.
_WHEEL_ARCH = re.compile(r"^Tag: \S+-(?:many|musl)linux\w*?_(x86_64|aarch64)\s*$", re.M)


@dataclass(frozen=True)
class Embedded:
    """One agent release zip in the bundle and the SHA-256 it had when it was bundled."""

    version: str
    asset: str
    sha256: str

    @property
    def arch(self) -> str:
        match = ASSET_RE.match(self.asset)
        return match.group(1) if match else self.asset

    @property
    def member(self) -> str:
        """Its path inside the bundle's package (and inside an --agent-base-url tree)."""
        return f"v{self.version}/{self.asset}"


@dataclass(frozen=True)
class Bundle:
    """The agents a bundle carries."""

    agents: tuple[Embedded, ...]

    def find(self, version: str, asset: str) -> Embedded | None:
        return next((a for a in self.agents if (a.version, a.asset) == (version, asset)), None)

    def versions(self) -> list[str]:
        return sorted({a.version for a in self.agents}, key=_version_key)

    def summary(self) -> str:
        """`nezha-agent 0.20.5 (amd64), 2.3.3 (amd64, arm64)`."""
        parts = [f"{v} ({', '.join(sorted(a.arch for a in self.agents if a.version == v))})" for v in self.versions()]
        return "nezha-agent " + ", ".join(parts)

    def require(self, version: str, asset: str) -> Embedded:
        """The embedded zip of `version` and `asset`; SettingsError (exit 2) naming what is missing."""
        found = self.find(version, asset)
        if found is None:
            arch = ASSET_RE.sub(r"\1", asset)
            needs = {AGENT_V0: "the agent of v0 dashboards", AGENT_V1: "the agent of v1/v2 dashboards"}.get(
                version, "the --agent-version asked for")
            raise SettingsError([
                f"this bundle has no nezha-agent {version} for {arch} (this node's architecture; {version} is "
                f"{needs}); it carries {self.summary()}. Build a bundle whose --agent-dir holds "
                f"v{version}/{asset} (`nezha-bootstrap bundle`)",
            ])
        return found


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


# --- reading the bundle this tool runs from --------------------------------------------------------

def carried() -> Bundle | None:
    """The bundle this tool runs from, or None (the plain zipapp, the installed tool)."""
    import importlib.util

    if importlib.util.find_spec(PACKAGE) is None:
        return None
    try:
        text = _files().joinpath(MANIFEST).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InstallerFailed(f"this bundle's {MANIFEST} cannot be read ({exc}): rebuild the bundle") from exc
    return parse_manifest(text)


def _files() -> Traversable:
    """The bundle's package: a directory in the zipapp's cache, or a path inside the zip itself."""
    from importlib import resources

    return resources.files(PACKAGE)


def parse_manifest(text: str) -> Bundle:
    """The manifest's agents; InstallerFailed (exit 5) when it is not one this version wrote."""
    try:
        data = json.loads(text)
        if data["format"] != FORMAT:
            raise ValueError(f"format {data['format']!r}, not {FORMAT}")
        agents = tuple(Embedded(str(a["version"]), str(a["asset"]), str(a["sha256"])) for a in data["agents"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InstallerFailed(f"this bundle's {MANIFEST} is not valid ({exc}): rebuild the bundle") from exc
    bad = [a for a in agents if not (VERSION_RE.match(a.version) and ASSET_RE.match(a.asset)
                                     and SHA256_RE.match(a.sha256))]
    if bad or not agents:
        raise InstallerFailed(f"this bundle's {MANIFEST} lists no agents or a malformed one: rebuild the bundle")
    return Bundle(agents)


@contextlib.contextmanager
def agent_zip(embedded: Embedded) -> Iterator[BinaryIO]:
    """An embedded zip as a seekable file, refused (InstallerFailed, exit 5) unless it hashes to the SHA-256 pinned
    when the bundle was built. Streamed, never read whole: only the binary it holds is (as a download is)."""
    import zipfile

    try:
        with _open_member(embedded.member) as handle:
            actual = _hash(handle)
            if actual != embedded.sha256:
                raise InstallerFailed(
                    f"this bundle's {embedded.member} has SHA-256 {actual}, not the {embedded.sha256} pinned when "
                    "the bundle was built: it was altered since; refusing it. Rebuild the bundle, or fetch it again "
                    "by its pinned hash")
            handle.seek(0)
            yield handle
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise InstallerFailed(f"this bundle lost {embedded.member} ({exc}): rebuild the bundle") from exc


def _hash(handle: BinaryIO) -> str:
    import hashlib

    digest = hashlib.sha256()
    for block in iter(lambda: handle.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def _open_member(member: str) -> Iterator[BinaryIO]:
    """A member of the bundle's package: from the package (the zip on sys.path), else from the zipapp this runs
    from, whose start-up code leaves the agent zips in the archive (packaging/zipapp_main.py, ARCHIVE_ONLY)."""
    path = _files().joinpath(member)
    if path.is_file():
        with path.open("rb") as handle:
            yield cast(BinaryIO, handle)  # a file or a zip member opened "rb": binary, readable, seekable
        return
    archive = running_zipapp()
    if archive is None:
        raise OSError(f"no {member} in {PACKAGE}, and this is not running from a zipapp")
    import zipfile

    with zipfile.ZipFile(archive) as opened, opened.open(f"{PACKAGE}/{member}") as handle:
        yield cast(BinaryIO, handle)  # ZipExtFile: binary, readable, seekable


def running_zipapp() -> Path | None:
    """The .pyz this process was started from (zipimport's loader of `__main__` knows its file), or None."""
    loader = getattr(sys.modules.get("__main__"), "__loader__", None)
    archive = getattr(loader, "archive", None)
    return Path(archive) if isinstance(archive, str) and os.path.isfile(archive) else None


# --- writing a bundle ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Written:
    """What `write` made: the file, its SHA-256 and size, the agents it carries, and what it lacks."""

    path: Path
    sha256: str
    size: int
    bundle: Bundle
    warnings: tuple[str, ...]


def write(base: Path, agent_dir: Path, output: Path, arches: Sequence[str] = ()) -> Written:
    """A new zipapp at `output`: `base` plus the zips of `agent_dir` for `arches` (`uname -m` or release words;
    default: the architecture `base` runs on), each checked against its checksums.txt. Same inputs, same bytes."""
    from nezha_bootstrap.firstboot.zipapp import MAX_PYZ_BYTES

    prefix, members = _read_base(base)
    words = _release_arches(arches or [_base_arch(base, members)])
    agents, data = _collect(agent_dir, words)
    bundle = Bundle(tuple(agents))
    members = {name: value for name, value in members.items() if not name.startswith(f"{PACKAGE}/")}
    members.update(_bundle_members(bundle, data))
    try:
        size = _write_zip(output, prefix, members, members["__main__.py"][0].date_time, MAX_PYZ_BYTES)
    except OSError as exc:
        raise InternalError(f"cannot write {output}: {exc.strerror or exc}") from exc
    return Written(output, _sha256_file(output), size, bundle, tuple(_coverage(bundle, words)))


def _read_base(base: Path) -> tuple[bytes, dict[str, Member]]:
    """The zipapp's leading bytes (its #! line) and its members."""
    import zipfile

    try:
        raw = base.read_bytes()
        with zipfile.ZipFile(base) as archive:
            members = {info.filename: (info, archive.read(info)) for info in archive.infolist()}
    except (OSError, zipfile.BadZipFile) as exc:
        raise SettingsError([f"--pyz {base}: not a readable zipapp ({exc})"]) from exc
    if "__main__.py" not in members:
        raise SettingsError([f"--pyz {base}: not a zipapp (no __main__.py): use dist/nezha-bootstrap-<version>-"
                             "<arch>.pyz from packaging/build"])
    first = raw.split(b"\n", 1)[0] + b"\n"
    return (first if first.startswith(b"#!") else b""), members


def _base_arch(base: Path, members: dict[str, Member]) -> str:
    for name, (_, data) in members.items():
        if re.fullmatch(r"psutil-[^/]+\.dist-info/WHEEL", name):
            match = _WHEEL_ARCH.search(data.decode("utf-8", errors="replace"))
            if match:
                return match.group(1)
    raise SettingsError([f"--pyz {base}: cannot tell which architecture it runs on (no psutil wheel tag): "
                         "give --arch"])


def _release_arches(arches: Iterable[str]) -> list[str]:
    """`uname -m` or release words (x86_64, amd64) as release words, each once, in order."""
    words: list[str] = []
    for arch in arches:
        word = ARCHES.get(arch, arch if arch in ARCHES.values() else None)
        if word is None:
            raise SettingsError([f"--arch {arch!r} is not an architecture with an agent release; known: "
                                 f"{', '.join(sorted(set(ARCHES) | set(ARCHES.values())))}"])
        if word not in words:
            words.append(word)
    return words


def _collect(agent_dir: Path, arches: list[str]) -> tuple[list[Embedded], dict[str, bytes]]:
    """Every v<version>/nezha-agent_linux_<arch>.zip of `agent_dir`, each checked against its checksums.txt."""
    if not agent_dir.is_dir():
        raise SettingsError([f"--agent-dir {agent_dir} is not a directory"])
    agents: list[Embedded] = []
    data: dict[str, bytes] = {}
    try:
        versions = sorted((d for d in agent_dir.iterdir() if d.is_dir() and VERSION_RE.match(d.name[1:])
                           and d.name.startswith("v")), key=lambda d: _version_key(d.name))
    except OSError as exc:
        raise SettingsError([f"--agent-dir {agent_dir}: {exc.strerror or exc}"]) from exc
    for directory in versions:
        for arch in arches:
            asset = f"nezha-agent_linux_{arch}.zip"
            if (directory / asset).is_file():
                embedded, zipped = _checked(directory, asset)
                agents.append(embedded)
                data[embedded.member] = zipped
    if not agents:
        raise SettingsError([f"--agent-dir {agent_dir} holds no v<version>/nezha-agent_linux_<arch>.zip for "
                             f"{', '.join(arches)} (the layout of --agent-base-url, e.g. v{AGENT_V1}/"
                             f"nezha-agent_linux_{arches[0]}.zip beside its checksums.txt)"])
    return agents, data


def _checked(directory: Path, asset: str) -> tuple[Embedded, bytes]:
    """A release zip read once, taken only if it hashes to checksums.txt's value and holds `nezha-agent`."""
    import hashlib

    from nezha_bootstrap.agent import CHECKSUMS_CAP, ZIP_CAP

    checksums, path = directory / "checksums.txt", directory / asset
    try:
        if checksums.stat().st_size > CHECKSUMS_CAP or path.stat().st_size > ZIP_CAP:
            raise InstallerFailed(f"{path} or its checksums.txt is larger than a release's ({ZIP_CAP} bytes)")
        listed = parse_checksums(checksums.read_text(encoding="utf-8", errors="replace"), asset)
        data = path.read_bytes()
    except OSError as exc:
        raise SettingsError([f"{checksums if not checksums.exists() else path}: {exc.strerror or exc} "
                             "(each version's directory needs the release's checksums.txt)"]) from exc
    except InstallerFailed as exc:
        raise InstallerFailed(f"{directory}: {exc}") from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != listed:
        raise InstallerFailed(f"{path} has SHA-256 {actual}, but {checksums} says {listed}: refusing it "
                              "(a broken download or mirror); download it again")
    _holds_agent(path, data)
    return Embedded(directory.name[1:], asset, actual), data


def _holds_agent(path: Path, data: bytes) -> None:
    import io
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            archive.getinfo("nezha-agent")
    except (zipfile.BadZipFile, KeyError):
        raise InstallerFailed(f"{path} is not an agent release zip (no `nezha-agent` inside)") from None


def _coverage(bundle: Bundle, arches: list[str]) -> list[str]:
    """What nodes of each generation will lack: the default versions per architecture."""
    warnings = []
    for version, generation in ((AGENT_V0, "v0"), (AGENT_V1, "v1/v2")):
        lacking = [arch for arch in arches if bundle.find(version, f"nezha-agent_linux_{arch}.zip") is None]
        if lacking:
            warnings.append(f"no nezha-agent {version} for {', '.join(lacking)}: on {generation} dashboards such "
                            "nodes stop before registering (exit 2) unless --agent-version names a version it carries")
    return warnings


def _bundle_members(bundle: Bundle, data: dict[str, bytes]) -> dict[str, Member]:
    import zipfile

    manifest = {"format": FORMAT, "agents": [{"version": a.version, "asset": a.asset, "sha256": a.sha256}
                                             for a in bundle.agents]}
    files = {f"{PACKAGE}/__init__.py": INIT,
             f"{PACKAGE}/{MANIFEST}": (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode(),
             **{f"{PACKAGE}/{member}": zipped for member, zipped in data.items()}}
    directories = {name[:i + 1] for name in files for i, char in enumerate(name) if char == "/"}
    return {name: (zipfile.ZipInfo(name), files.get(name, b"")) for name in [*files, *directories]}


def _write_zip(output: Path, prefix: bytes, members: dict[str, Member], date_time: tuple[int, ...], cap: int) -> int:
    """Sorted members, one timestamp, fixed modes (as packaging/artifacts.py writes the zipapp); the agent zips
    stored (they are compressed already). Written beside `output`, then renamed: 0755, at most `cap` bytes."""
    import tempfile
    import zipfile

    output.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(prefix)
            with zipfile.ZipFile(handle, "w") as archive:
                for name in sorted(members):
                    _add(archive, name, members[name], date_time)
            handle.flush()
            os.fsync(handle.fileno())
        size = os.path.getsize(temp)
        if size > cap:
            raise SettingsError([f"the bundle would be {size} bytes, over the {cap}-byte cap of the first-boot fetch "
                                 "(and of render --pyz): bundle fewer architectures or versions"])
        os.chmod(temp, 0o755)
        os.replace(temp, output)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return size


def _add(archive: zipfile.ZipFile, name: str, member: Member, date_time: tuple[int, ...]) -> None:
    import zipfile

    original, data = member
    info = zipfile.ZipInfo(name, date_time=date_time)  # type: ignore[arg-type]  # a 6-tuple, from the base
    info.create_system = 3
    if name.endswith("/"):
        info.external_attr = (0o40755 << 16) | 0x10
        archive.writestr(info, b"")
        return
    info.external_attr = original.external_attr or (0o100644 << 16)
    stored = name.endswith(".zip") and name.startswith(f"{PACKAGE}/")
    info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    archive.writestr(info, data, compresslevel=None if stored else 9)


def _sha256_file(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
