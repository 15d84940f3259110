"""Plan and run the official install.sh, then verify what it left behind (it exits 0 on failure)."""

from __future__ import annotations

import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from nezha_bootstrap.config import SECRET_RE, Config, display_url, is_valid_host
from nezha_bootstrap.errors import InstallerFailed
from nezha_bootstrap.paths import Paths

SCRIPT_CAP = 1024 * 1024
UNINSTALL_TIMEOUT = 60.0
ACTIVE_WAIT = 15.0
SECRET_ARG = 5  # sh SCRIPT install_agent HOST PORT SECRET ...


@dataclass(frozen=True)
class InstallPlan:
    """What the install step will do, as data (printed by --dry-run, performed by `perform`)."""

    script_url: str
    script_sha256: str | None
    script_path: Path
    argv: tuple[str, ...] = field(repr=False)
    cwd: Path
    env_set: tuple[tuple[str, str], ...]
    env_unset: tuple[str, ...]
    uninstall_first: tuple[str, ...] | None
    unit: Path
    expect_server: str
    expect_tls: bool

    def describe(self) -> list[str]:
        """Human lines for --dry-run; the secret is masked by the reporter's redaction."""
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


class Expected(Protocol):
    """What the agent unit must say: an InstallPlan (install.sh), or agent.V0Install (`service install`)."""

    @property
    def unit(self) -> Path: ...

    @property
    def expect_server(self) -> str: ...

    @property
    def expect_tls(self) -> bool: ...


def read_exec_start(unit: Path) -> list[str] | None:
    """The ExecStart argv of a systemd unit, or None when there is none."""
    try:
        text = unit.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.strip() == "ExecStart":
            try:
                return shlex.split(value)
            except ValueError:
                return None
    return None


def verify_unit(plan: Expected, paths: Paths, secret: str) -> None:
    """Check that the agent unit exists and starts the agent exactly as asked."""
    if plan.unit.exists():
        argv = read_exec_start(plan.unit)
        if argv is None:
            raise InstallerFailed(f"the installer exited, but {plan.unit} has no readable ExecStart")
        problems = _exec_start_problems(argv, plan, secret)
    elif paths.agent_openrc.exists():
        text = paths.agent_openrc.read_text(encoding="utf-8", errors="replace")
        problems = [] if plan.expect_server in text and secret in text else ["server or secret"]
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
    if _value_after(argv, "-s", "--server") != plan.expect_server:
        problems.append("server address")
    if _value_after(argv, "-p", "--password") != secret:
        problems.append("secret")
    if ("--tls" in argv) != plan.expect_tls:
        problems.append("TLS")
    return problems


def _value_after(argv: list[str], *names: str) -> str | None:
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
