"""Plan and run the official install.sh, then verify what it left behind (it exits 0 on failure)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Final

from nezha_bootstrap.config import SECRET_RE, Config, display_url, is_valid_host
from nezha_bootstrap.errors import InstallerFailed
from nezha_bootstrap.paths import Paths
from nezha_bootstrap.record import Record
from nezha_bootstrap.retry import Notify

if TYPE_CHECKING:
    import httpx  # its one home is http.py; here only for the client's type

SCRIPT_CAP = 1024 * 1024
SECRET_ARG = 5  # sh SCRIPT install_agent HOST PORT SECRET ...


class InstallPlan(Record):
    """What the install step will do, as data (printed by --dry-run, performed by `perform`)."""

    compared = ("script_url", "script_sha256", "script_path", "argv", "cwd", "env_set",
                "env_unset", "uninstall_first", "unit", "expect_server", "expect_tls")
    shown = tuple(name for name in compared if name != "argv")  # argv holds the node secret

    def __init__(
        self,
        script_url: str,
        script_sha256: str | None,
        script_path: Path,
        argv: tuple[str, ...],
        cwd: Path,
        env_set: tuple[tuple[str, str], ...],
        env_unset: tuple[str, ...],
        uninstall_first: tuple[str, ...] | None,
        unit: Path,
        expect_server: str,
        expect_tls: bool,
    ) -> None:
        self.script_url: Final = script_url
        self.script_sha256: Final = script_sha256
        self.script_path: Final = script_path
        self.argv: Final = argv
        self.cwd: Final = cwd
        self.env_set: Final = env_set
        self.env_unset: Final = env_unset
        self.uninstall_first: Final = uninstall_first
        self.unit: Final = unit
        self.expect_server: Final = expect_server
        self.expect_tls: Final = expect_tls

    def describe(self) -> list[str]:
        """Human lines for --dry-run; the secret argument is shown as <secret>."""
        lines = [
            f"download {display_url(self.script_url)} (at most {SCRIPT_CAP} bytes)",
            f"check SHA-256 {self.script_sha256}" if self.script_sha256 else "no SHA-256 check (none given)",
            f"store it as {self.script_path} (directory 0700)",
        ]
        if self.uninstall_first:
            lines.append("uninstall the existing agent: " + shlex.join(self.uninstall_first))
        env = [f"{k}={v}" for k, v in self.env_set] + [f"unset {k}" for k in self.env_unset]
        shown = ["<secret>" if i == SECRET_ARG else word for i, word in enumerate(self.argv)]
        lines.append(f"run: {shlex.join(shown)}")
        lines.append(f"  cwd {self.cwd}, stdin /dev/null, environment: {', '.join(env)}")
        lines.append(f"verify {self.unit}: ExecStart has -s {self.expect_server}, the secret"
                     + (", --tls" if self.expect_tls else ", no --tls"))
        return lines


def plan(config: Config, paths: Paths, secret: str) -> InstallPlan:
    """Build the installer call; every value that reaches install.sh is checked here once more."""
    if not SECRET_RE.match(secret):
        raise InstallerFailed("refusing to pass a secret that is not letters and digits to install.sh")
    if not is_valid_host(config.probe_address):
        raise InstallerFailed("refusing to pass an invalid probe address to install.sh")
    script_path = paths.script_dir / "install.sh"
    argv = ["sh", str(script_path), "install_agent", config.agent_host, str(config.probe_port), secret]
    if config.tls:
        argv.append("--tls")
    argv.extend(config.agent_flags)
    uninstall = None
    if paths.agent_binary.exists():
        # Re-running install.sh over an installed agent loses it (installer-v0.md): uninstall first.
        uninstall = (str(paths.agent_binary), "service", "uninstall")
    return InstallPlan(
        script_url=config.script_url,
        script_sha256=config.script_sha256,
        script_path=script_path,
        argv=tuple(argv),
        cwd=paths.agent_dir,  # kept: the agent's unit uses it as WorkingDirectory
        env_set=(("CN", "1"),) if config.mirror == "cn" else (),
        # The installer never needs the API token; CN, when set at all, selects the China mirror.
        env_unset=("NEZHA_TOKEN",) if config.mirror == "cn" else ("CN", "NEZHA_TOKEN"),
        uninstall_first=uninstall,
        unit=paths.agent_unit,
        expect_server=f"{config.agent_host}:{config.probe_port}",
        expect_tls=config.tls,
    )


def download_script(client: httpx.Client, config: Config, deadline: float, notify: Notify) -> bytes:
    """install.sh from --script-url, at most SCRIPT_CAP bytes, refused unless it has the pinned hash."""
    from nezha_bootstrap.http import download

    content = download(client, config.script_url, cap=SCRIPT_CAP, deadline=deadline, notify=notify,
                       what="download install.sh")
    check_script(content, config.script_sha256)
    return content


def check_script(content: bytes, sha256: str | None) -> None:
    """Refuse a script whose hash is not the pinned one."""
    if sha256 is None:
        return
    import hashlib  # here: `--help` and `--dry-run` never load it

    actual = hashlib.sha256(content).hexdigest()
    if actual != sha256:
        raise InstallerFailed(
            f"the install script's SHA-256 is {actual}, expected {sha256}: refusing to run it "
            "(the URL serves another version, or the download was altered)"
        )
