"""Install the Nezha agent directly from its release: download, check, extract, configure, verify.

Facts from dashboard-v1-v2.md ("The agent, installed without the vendor script"): release assets
`nezha-agent_linux_<arch>.zip` holding only `nezha-agent`, a `checksums.txt` beside them,
`config.yml` next to the binary, `nezha-agent service -c CONFIG install|restart|uninstall`, and
`NZ_*` environment variables (also from /etc/sysconfig/nezha-agent) overriding the file.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shlex
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Callable, Protocol

# AGENT_V0 and AGENT_V1 are re-exported: the pinned versions belong with the rest of the release facts.
from nezha_bootstrap.config import AGENT_V0 as AGENT_V0
from nezha_bootstrap.config import AGENT_V1 as AGENT_V1
from nezha_bootstrap.config import SHA256_RE, display_url
from nezha_bootstrap.errors import InstallerFailed
from nezha_bootstrap.paths import HOST, Paths, read_under
from nezha_bootstrap.retry import Notify

if TYPE_CHECKING:
    import httpx  # its one home is http.py; here only for the client's type

    from nezha_bootstrap.bundle import Bundle, Embedded

ZIP_CAP = 64 * 1024 * 1024  # the real zips are ~5 MB
BINARY_CAP = 128 * 1024 * 1024
CHECKSUMS_CAP = 64 * 1024
ACTIVE_WAIT = 15.0  # seconds for `systemctl is-active` to say active after an install
# `uname -m` -> the release's arch word.
ARCHES = {
    "x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "i386": "386",
    "i686": "386", "armv7l": "arm", "armv6l": "arm", "s390x": "s390x", "riscv64": "riscv64",
    "mips": "mips", "mipsel": "mipsle", "loongarch64": "loong64",
}
CONFIG_TARGET = "/opt/nezha/agent/config.yml"


def asset_name(machine: str) -> str:
    """The release asset for `uname -m`."""
    arch = ARCHES.get(machine)
    if arch is None:
        raise InstallerFailed(
            f"no nezha-agent release for the architecture {machine!r}; known: {', '.join(sorted(set(ARCHES)))}"
        )
    return f"nezha-agent_linux_{arch}.zip"


@dataclass(frozen=True)
class Release:
    """Where the agent zip and its checksums come from: the release host, or the bundle this tool runs from."""

    base_url: str
    version: str
    asset: str
    pinned_sha256: str | None = None
    bundled: Bundle | None = None  # set: the zip comes from this bundle and nothing is downloaded

    @property
    def asset_url(self) -> str:
        return f"{self.base_url}/v{self.version}/{self.asset}"

    @property
    def checksums_url(self) -> str:
        return f"{self.base_url}/v{self.version}/checksums.txt"

    def describe(self) -> list[str]:
        """The download step as --dry-run prints it."""
        pinned = f" and the pinned {self.pinned_sha256}" if self.pinned_sha256 else ""
        if self.bundled is not None:
            found = self.bundled.find(self.version, self.asset)
            if found is None:
                return [f"stop (exit 2): this bundle has no v{self.version}/{self.asset}; it carries "
                        f"{self.bundled.summary()}"]
            return [f"take v{self.version}/{self.asset} from this bundle, nothing downloaded: check its SHA-256 "
                    f"against the {found.sha256} pinned in the bundle{pinned}; extract nezha-agent (0755)"]
        return [
            f"download {display_url(self.checksums_url)} (at most {CHECKSUMS_CAP} bytes)",
            f"download {display_url(self.asset_url)} (at most {ZIP_CAP} bytes, redirects followed)",
            f"check its SHA-256 against checksums.txt{pinned}; extract nezha-agent (0755)",
        ]


def obtaining(release: Release) -> str:
    """The download step's line."""
    if release.bundled is not None:
        return f"taking nezha-agent v{release.version} ({release.asset}) from this bundle"
    return f"downloading nezha-agent v{release.version} ({release.asset})"


def render_config(values: Mapping[str, Any]) -> str:
    """config.yml: one `key: value` line each; strings as JSON strings (valid YAML scalars)."""
    lines = []
    for key, value in values.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int):
            text = str(value)
        else:
            # mutmut's ensure_ascii=None survives, equivalent (None is as falsy as False); no pragma here:
            # it would also hide ensure_ascii=True and the argument's removal, which the tests catch.
            text = json.dumps(str(value), ensure_ascii=False)
        lines.append(f"{key}: {text}")
    return "\n".join(lines) + "\n"


def parse_checksums(text: str, asset: str) -> str:
    """The SHA-256 that checksums.txt gives for `asset`."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].removeprefix("*") == asset:  # `*`: sha256sum's binary mode
            digest = parts[0].lower()
            if SHA256_RE.match(digest):
                return digest
    raise InstallerFailed(f"checksums.txt of the release has no SHA-256 for {asset}; refusing the download")


def check_zip(data: bytes | BinaryIO, release: Release, listed: str) -> None:
    """The zip (bytes, or a file read from its start) must hash to checksums.txt's value and to the
    pinned one when given."""
    import hashlib  # here: `--help` and `--dry-run` never load it

    digest = hashlib.sha256()
    if isinstance(data, bytes):
        digest.update(data)
    else:
        data.seek(0)
        for block in iter(lambda: data.read(1 << 20), b""):
            digest.update(block)
    actual = digest.hexdigest()
    if actual != listed:
        raise InstallerFailed(
            f"{release.asset} has SHA-256 {actual}, but the release's checksums.txt says {listed}: "
            "refusing it (a broken download or mirror)"
        )
    if release.pinned_sha256 and actual != release.pinned_sha256:
        raise InstallerFailed(
            f"{release.asset} has SHA-256 {actual}, but --agent-sha256 pins {release.pinned_sha256}: refusing it"
        )


def extract_binary(data: bytes | BinaryIO, into: BinaryIO) -> int:
    """Copy the `nezha-agent` member of a release zip (bytes, or a file) into `into`; its size.

    Streamed a block at a time and stopped past BINARY_CAP, whatever the zip's header says: a zip
    that matches its checksums.txt can still hold a 127 MiB member (130 KB compressed), which read
    whole took the run to 284 MiB.
    """
    import io
    import zipfile  # here: `--help` and `--dry-run` never load it
    import zlib

    try:
        with zipfile.ZipFile(io.BytesIO(data) if isinstance(data, bytes) else data) as archive:
            info = archive.getinfo("nezha-agent")
            if info.file_size > BINARY_CAP:
                raise InstallerFailed(f"nezha-agent in the zip is {info.file_size} bytes, over the {BINARY_CAP} cap")
            with archive.open(info) as member:
                return _copy_capped(member, into)
    except KeyError:
        raise InstallerFailed("the release zip holds no `nezha-agent`") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        # RuntimeError: an encrypted member; NotImplementedError: a compression zipfile cannot read
        raise InstallerFailed(f"the release zip is not a valid zip: {exc}") from exc


def _copy_capped(member: IO[bytes], into: BinaryIO) -> int:
    size = 0
    for block in iter(lambda: member.read(1 << 20), b""):  # the CRC is checked at the end (BadZipFile)
        size += len(block)
        if size > BINARY_CAP:
            raise InstallerFailed(f"nezha-agent in the zip is larger than the {BINARY_CAP} bytes cap")
        into.write(block)
    return size


def fetch_binary(client: httpx.Client, release: Release, deadline: float, notify: Notify, into: BinaryIO) -> int:
    """checksums.txt, then the zip, both within the one `deadline` of the step; both hashes checked;
    the `nezha-agent` the zip holds written to `into` (its size returned).

    checksums.txt comes over the same channel as the zip, so it authenticates nothing by itself: it
    catches a broken download or mirror. A plain-http release is used only when --agent-sha256 pins
    it (config.validate_agent), and an https release is never followed to http (http.next_hop).
    A release from a bundle is read from it instead (bundled_binary): nothing is downloaded.
    """
    import tempfile  # here: `--help` and `--dry-run` never load it

    if release.bundled is not None:
        return bundled_binary(release, into)
    from nezha_bootstrap.http import download

    end = time.monotonic() + deadline
    # Release hosts redirect to their storage: redirects are followed here (no credential is sent).
    get = functools.partial(download, client, notify=notify, follow_redirects=True,
                            missing=": no such agent version or asset")
    checksums = get(release.checksums_url, cap=CHECKSUMS_CAP, deadline=deadline, what="download checksums.txt")
    listed = parse_checksums(checksums.decode(errors="replace"), release.asset)  # bytes.decode is UTF-8
    left = end - time.monotonic()
    if left <= 0:
        raise InstallerFailed(f"download {release.asset}: no time left within the {deadline:g} s deadline "
                              "after checksums.txt")
    # The zip goes to a temporary file and the binary it holds straight into `into`: the run's peak
    # RSS stays under 64 MiB for a zip at its cap (issue 10) and a member at its cap (issue 18).
    # (An OSError outside these two local steps is one of `into`: the caller names its path.)
    with local_step(f"store {release.asset} in a temporary file"):
        zipped = tempfile.TemporaryFile()  # unnamed (O_TMPFILE) where the file system allows
    with zipped:
        with local_step(f"store {release.asset} in a temporary file"):
            get(release.asset_url, cap=ZIP_CAP, deadline=left, what=f"download {release.asset}", into=zipped)
        check_zip(zipped, release, listed)
        return extract_binary(zipped, into)


def bundled_binary(release: Release, into: BinaryIO) -> int:
    """The `nezha-agent` of the zip this bundle carries for `release`, written to `into` (its size returned;
    see check_bundled for what is refused)."""
    from nezha_bootstrap import bundle

    embedded = _embedded(release)
    with bundle.agent_zip(embedded) as zipped:
        if release.pinned_sha256:  # agent_zip checked the bundle's hash: only --agent-sha256 can differ here
            check_zip(zipped, release, embedded.sha256)
        return extract_binary(zipped, into)


def check_bundled(release: Release) -> None:
    """The flows call this before anything changes: SettingsError (exit 2) when the bundle carries no zip for
    `release`, InstallerFailed (exit 5) when its zip no longer has the SHA-256 pinned in the bundle or
    --agent-sha256. A local read, streamed."""
    from nezha_bootstrap import bundle

    embedded = _embedded(release)
    with bundle.agent_zip(embedded) as zipped:
        if release.pinned_sha256:
            check_zip(zipped, release, embedded.sha256)


def _embedded(release: Release) -> Embedded:
    assert release.bundled is not None
    return release.bundled.require(release.version, release.asset)


def service_argv(paths: Paths, action: str, config: Path | None = None) -> list[str]:
    """`nezha-agent service -c CONFIG ACTION` (the secret stays in the 0600 config, never in argv)."""
    return [str(paths.agent_binary), "service", "-c", str(config or paths.agent_dir / "config.yml"), action]


def installed_unit(paths: Paths) -> Path | None:
    """The agent's service definition: the systemd unit, else the init script, else None.

    Observed with the real agent v2.3.3 (and v0.20.5): `nezha-agent service install` on a host without
    systemd writes a SysV script /etc/init.d/nezha-agent (plus rc?.d links) and starts it; on an
    OpenRC host it writes /etc/init.d/nezha-agent too (kardianos/service). Either counts as installed.
    """
    for unit in (paths.agent_unit, paths.agent_openrc):
        if unit.exists():
            return unit
    return None


def binary_problem(paths: Paths) -> str | None:
    """Why the installed agent binary cannot run (gone, not a regular file, empty, not executable), or None."""
    import stat

    binary = paths.agent_binary
    try:
        info = os.lstat(binary)
    except FileNotFoundError:
        return f"the agent binary {binary} is gone"
    except OSError as exc:
        return f"the agent binary {binary} cannot be looked at: {exc.strerror}"
    if not stat.S_ISREG(info.st_mode):
        return f"the agent binary {binary} is not a regular file"
    if info.st_size == 0:
        return f"the agent binary {binary} is empty"
    if not info.st_mode & 0o111:
        return f"the agent binary {binary} is not executable"
    return None


def installed_drift(paths: Paths, saved_secret: str, saved_uuid: str | None, server: str, tls: bool,
                    flags: tuple[str, ...] | None) -> list[str]:
    """How the agent on disk differs from what the last install put there (`status` shows it, `run` repairs
    it): the binary, the unit, and the unit's command (v0: server, secret, TLS, flags; v1/v2: -c config.yml)."""
    found = [problem for problem in (binary_problem(paths),) if problem]
    unit = installed_unit(paths)
    if unit is None:
        return [*found, "the agent unit is gone"]
    if saved_uuid is not None:  # v1/v2: config.yml is compared with the settings by the flow itself
        argv = read_exec_start(unit, paths.root) if unit == paths.agent_unit else read_init_command(unit, paths.root)
        if not argv or argv[1:] != ["-c", CONFIG_TARGET]:
            found.append(f"{unit} does not run the agent with -c {CONFIG_TARGET}")
        return found
    if unit != paths.agent_unit:
        return found  # an init script of the v0 agent: not parsed
    argv = read_exec_start(unit, paths.root) or []
    actual = value_after(argv, "-s", "--server")
    if actual != server:
        found.append(f"the unit's server is {actual or 'missing'}, the install was for {server}")
    if value_after(argv, "-p", "--password") != saved_secret:
        found.append("the unit's secret is not the saved one")
    if ("--tls" in argv) != tls:
        found.append(f"the unit runs the agent {'with' if '--tls' in argv else 'without'} --tls, the install did not")
    missing = [flag for flag in flags or () if flag not in argv]
    if missing:
        found.append(f"the unit lacks the agent flags {' '.join(missing)}")
    return found


def unit_problems(paths: Paths, expected_config: str) -> list[str]:
    """What is wrong with the installed agent: unit or init script, its command, the config, the binary."""
    unit = installed_unit(paths)
    if unit is None:
        return [f"no agent unit ({paths.agent_unit} or {paths.agent_openrc}) was written"]
    problems = []
    if unit == paths.agent_unit:
        argv, what = read_exec_start(unit, paths.root), f"{unit}'s ExecStart"
    else:
        argv, what = read_init_command(unit, paths.root), f"{unit}'s command"
    if not argv or argv[1:] != ["-c", CONFIG_TARGET]:
        problems.append(f"{what} does not run the agent with -c {CONFIG_TARGET}")
    written = _text(paths.agent_dir / "config.yml", paths.root, errors="strict")
    if written != expected_config:
        problems.append(f"{paths.agent_dir / 'config.yml'} is not what was written (changed by the agent?)")
    if not os.access(paths.agent_binary, os.X_OK):
        problems.append(f"{paths.agent_binary} is missing or not executable")
    return problems


def override_warnings(paths: Paths, environ: Mapping[str, str]) -> list[str]:
    """Warnings about NZ_* values that could change the agent's identity behind the config."""
    warnings = []
    names = sorted(k for k in environ if k.startswith("NZ_"))
    if names:
        warnings.append(
            f"{', '.join(names)} set in this environment: ignored (the agent's commands run without NZ_*); "
            "the identity comes from config.yml"
        )
    sysconfig = paths.under("/etc/sysconfig/nezha-agent")
    text = _text(sysconfig, paths.root)  # confined: a link to the host's file reads the image's, or nothing
    if text is not None:
        keys = {line.partition("=")[0].strip().removeprefix("export ").strip()
                for line in text.splitlines() if "=" in line}
        overrides = sorted(key for key in keys if key.startswith("NZ_"))
        shown = f" (it sets {', '.join(overrides)})" if overrides else ""
        warnings.append(
            f"/etc/sysconfig/nezha-agent exists{shown}: the agent reads NZ_* from it, which overrides "
            "config.yml (NZ_UUID changes the server it enrolls as); remove it unless you mean it"
        )
    return warnings


_UUID_LINE = re.compile(r'^uuid:\s*"?([^"\s]*)"?\s*$', re.MULTILINE)


def config_uuid(path: Path, root: Path = HOST) -> str | None:
    """The uuid a config.yml holds, or None."""
    text = _text(path, root)
    match = _UUID_LINE.search(text) if text is not None else None
    return match.group(1) if match else None


def _text(path: Path, root: Path, errors: str = "replace") -> str | None:
    """A small text file under `root`, read the confined way (paths.read_under), or None when it cannot be."""
    try:
        return read_under(root, path).decode(errors=errors)  # bytes.decode is UTF-8
    except (OSError, UnicodeDecodeError):
        return None


@dataclass(frozen=True)
class Leftover:
    """A second agent the vendor script installed on a rerun: its config, uuid and unit."""

    config: Path
    uuid: str | None
    unit: Path | None = field(default=None)


def vendor_leftovers(paths: Paths) -> list[Leftover]:
    """`config-*.yml` next to the agent, each with its `nezha-agent-<hash>` unit when present."""
    import hashlib

    found = []
    for config in sorted(paths.agent_dir.glob("config-*.yml")):
        target = "/" + str(config.relative_to(paths.root))
        name = f"nezha-agent-{hashlib.md5(target.encode()).hexdigest()[:7]}.service"  # the agent's own naming
        unit = paths.under(f"/etc/systemd/system/{name}")
        found.append(Leftover(config, config_uuid(config, paths.root), unit if unit.exists() else None))
    return found


class Expected(Protocol):
    """What a v0 agent unit must say: v0.script.InstallPlan (install.sh) or v0.direct.V0Install."""

    @property
    def unit(self) -> Path: ...

    @property
    def expect_server(self) -> str: ...

    @property
    def expect_tls(self) -> bool: ...


def read_exec_start(unit: Path, root: Path = HOST) -> list[str] | None:
    """The ExecStart argv of a systemd unit (read confined to `root`), or None when there is none."""
    text = _text(unit, root)
    if text is None:
        return None
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.strip() == "ExecStart":
            try:
                return shlex.split(value)
            except ValueError:
                return None
    return None


def read_init_command(script: Path, root: Path = HOST) -> list[str] | None:
    """The agent's argv in an init script the agent's `service install` wrote, or None.

    SysV (observed, real agent v2.3.3 on a host without systemd):
    `cmd="/opt/nezha/agent/nezha-agent "-c" "/opt/nezha/agent/config.yml""`, which sh reads as one word
    and splits at `$cmd`. OpenRC (kardianos/service's template): `command=PATH` and `command_args="ARGS "`.
    """
    text = _text(script, root)
    if text is None:
        return None
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key in ("cmd", "command", "command_args") and key not in values:
            try:
                words = shlex.split(value)
            except ValueError:
                return None
            values[key] = words[0] if words else ""  # sh assigns the first word (`a=b c` runs c)
    if "cmd" in values:
        return values["cmd"].split() or None
    if "command" in values:
        return [values["command"], *values.get("command_args", "").split()]
    return None


def verify_v0_unit(plan: Expected, paths: Paths, secret: str) -> None:
    """Check that the v0 agent unit exists and starts the agent with this server, secret and TLS."""
    if plan.unit.exists():
        argv = read_exec_start(plan.unit, paths.root)
        if argv is None:
            raise InstallerFailed(f"the installer exited, but {plan.unit} has no readable ExecStart")
        problems = _exec_start_problems(argv, plan, secret)
    elif paths.agent_openrc.exists():
        text = _text(paths.agent_openrc, paths.root)
        problems = [] if text is not None and plan.expect_server in text and secret in text else ["server or secret"]
    else:
        raise InstallerFailed(
            f"the installer exited, but wrote no agent unit ({plan.unit} or {paths.agent_openrc}); "
            "install.sh reports success even when the agent failed to install. Run again with -v "
            "to see its output"
        )
    if problems:
        raise InstallerFailed(f"the agent unit does not start the agent as asked: {', '.join(problems)} differ")
    if not os.access(paths.agent_binary, os.X_OK):
        raise InstallerFailed(f"the installer exited, but {paths.agent_binary} is missing or not executable")


def _exec_start_problems(argv: list[str], plan: Expected, secret: str) -> list[str]:
    problems = []
    if value_after(argv, "-s", "--server") != plan.expect_server:
        problems.append("server address")
    if value_after(argv, "-p", "--password") != secret:
        problems.append("secret")
    if ("--tls" in argv) != plan.expect_tls:
        problems.append("TLS")
    return problems


def value_after(argv: list[str], *names: str) -> str | None:
    """The word after the first of `names` in `argv` (a flag's value), or None."""
    for i, word in enumerate(argv[:-1]):
        if word in names:
            return argv[i + 1]
    return None


def wait_active(is_active: Callable[[], bool], seconds: float = ACTIVE_WAIT) -> None:
    """Poll `systemctl is-active` for a short while; the agent may need a moment to start."""
    end = time.monotonic() + seconds
    while True:
        if is_active():
            return
        if time.monotonic() >= end:
            raise InstallerFailed(
                f"the agent unit was written, but `systemctl is-active nezha-agent` is not active "
                f"after {seconds:g} s; see `journalctl -u nezha-agent`"
            )
        time.sleep(0.5)


def is_active() -> bool:
    """Whether systemd says the nezha-agent unit is active."""
    from nezha_bootstrap import system

    try:
        done = system.run(["systemctl", "is-active", "--quiet", "nezha-agent"], timeout=10)
    except OSError:
        return False
    return done.returncode == 0


@contextlib.contextmanager
def local_step(what: str) -> Iterator[None]:
    """An OSError of a local install step (a full disk, a read-only /opt) as InstallerFailed (exit 5), naming
    the path and the system's reason: the state keeps the secret or the uuid, so the next run installs again."""
    try:
        yield
    except OSError as exc:
        raise InstallerFailed(f"cannot {what}: {exc.strerror or exc}") from exc
