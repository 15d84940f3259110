"""`--method direct` on a v0 dashboard: the pinned v0 agent runs its own `service install`."""

from __future__ import annotations

import platform
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from nezha_bootstrap import agent
from nezha_bootstrap.agent import Release
from nezha_bootstrap.config import SECRET_RE, Config, is_valid_host
from nezha_bootstrap.errors import InstallerFailed
from nezha_bootstrap.paths import Paths


@dataclass(frozen=True)
class V0Install:
    """`--method direct` for a v0 dashboard, as data: the pinned v0 agent runs its own
    `service install -s HOST:PORT -p SECRET [--tls] [flags]`, which is what install.sh ends in, without
    the script's package-manager runs, SELinux change and geo probe (installer-v0.md)."""

    release: Release
    argv: tuple[str, ...] = field(repr=False)  # holds the node secret: the v0 agent takes it only as -p
    uninstall_first: tuple[str, ...] | None
    cwd: Path
    unit: Path
    expect_server: str
    expect_tls: bool

    def describe(self) -> list[str]:
        """Human lines for --dry-run; the secret is shown as <secret>."""
        lines = self.release.describe()
        lines.append(f"write {Path(self.argv[0])} (0755)")
        if self.uninstall_first:
            lines.append("uninstall the existing agent: " + shlex.join(self.uninstall_first))
        shown = ["<secret>" if i and self.argv[i - 1] == "-p" else word for i, word in enumerate(self.argv)]
        lines.append(f"run: {shlex.join(shown)}")
        lines.append(f"  cwd {self.cwd}, stdin /dev/null, environment without NZ_* and NEZHA_TOKEN")
        lines.append(f"verify {self.unit}: ExecStart has -s {self.expect_server}, the secret"
                     + (", --tls" if self.expect_tls else ", no --tls"))
        return lines


def plan_v0(config: Config, paths: Paths, secret: str, release: Release) -> V0Install:
    """The v0 agent's `service install` call; every value in it is checked here once more."""
    if not SECRET_RE.match(secret):
        raise InstallerFailed("refusing to pass a secret that is not letters and digits to the agent")
    if not is_valid_host(config.probe_address):
        raise InstallerFailed("refusing to pass an invalid probe address to the agent")
    server = f"{config.agent_host}:{config.probe_port}"
    argv = [str(paths.agent_binary), "service", "install", "-s", server, "-p", secret]
    if config.tls:
        argv.append("--tls")
    argv.extend(config.agent_flags)
    # `service install` refuses an existing unit ("Init already exists"): uninstall it first.
    present = paths.agent_unit.exists() or paths.agent_openrc.exists()
    return V0Install(
        release=release, argv=tuple(argv),
        uninstall_first=(str(paths.agent_binary), "service", "uninstall") if present else None,
        cwd=paths.agent_dir,  # kept: the agent's unit uses it as WorkingDirectory
        unit=paths.agent_unit, expect_server=server, expect_tls=config.tls,
    )


def v0_release(config: Config, machine: str | None = None) -> Release | None:
    """For `--method direct` (or a bundle) on a v0 dashboard: the pinned v0 agent release (v0.20.5 unless
    overridden)."""
    settings = config.agent
    if not settings.v0_direct:
        return None
    asset = agent.asset_name(machine or platform.machine())
    return Release(settings.base_url, settings.version or agent.AGENT_V0, asset, settings.sha256, settings.bundle)
