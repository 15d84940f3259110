"""`check`: a preflight that changes nothing. The result type and the checks every generation shares."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nezha_bootstrap.config import Config
from nezha_bootstrap.errors import BootstrapError, DashboardUnreachable, InstallerFailed
from nezha_bootstrap.retry import Transient

if TYPE_CHECKING:
    import httpx  # its one home is http.py; here only for the client's type

    from nezha_bootstrap.agent import Release
    from nezha_bootstrap.generation import Generation

CHECK_TIMEOUT = 10.0


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str  # "ok", "FAIL" or "skip"
    detail: str
    exit_code: int = 0

    @property
    def ok(self) -> bool:
        return self.status != "FAIL"

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.name, "status": self.status, "detail": self.detail, "exit_code": self.exit_code}


def failed(name: str, exc: BootstrapError | Transient) -> CheckResult:
    """A FAIL result carrying the exit code of `exc` (a network failure: that of DashboardUnreachable)."""
    code = exc.exit_code if isinstance(exc, BootstrapError) else DashboardUnreachable.exit_code
    return CheckResult(name, "FAIL", str(exc), code)


def check_probe(config: Config) -> CheckResult:
    """The agent's server must accept TCP connections: a wrong probe address fails silently later."""
    target = f"{config.agent_host}:{config.probe_port}"
    try:
        with socket.create_connection((config.probe_address, config.probe_port), timeout=CHECK_TIMEOUT):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        return CheckResult("probe", "FAIL", f"{target} does not accept connections: {reason}",
                           DashboardUnreachable.exit_code)
    return CheckResult("probe", "ok", f"{target} accepts connections")


def check_generation(config: Config, client: httpx.Client) -> tuple[CheckResult, Generation | None]:
    """Which generation answers: the three credential-free probes once (or --dashboard as given)."""
    from nezha_bootstrap.generation import Generation, detect, http_sender

    if config.agent.generation == "v0":
        return CheckResult("generation", "skip", "v0, as --dashboard says (not probed)"), Generation.V0
    if config.agent.generation == "v1":
        return CheckResult("generation", "skip", "v1 or newer, as --dashboard says (not probed)"), Generation.V1
    try:
        found = detect(http_sender(client, config.dashboard_url), CHECK_TIMEOUT)
    except (Transient, BootstrapError) as exc:
        return failed("generation", exc), None
    return CheckResult("generation", "ok", f"{found.value} (three requests without credentials)"), found


def check_release(release: Release, client: httpx.Client) -> CheckResult:
    """checksums.txt and the agent zip download, the zip's SHA-256 matches, it holds nezha-agent."""
    import os

    from nezha_bootstrap.agent import fetch_binary

    try:  # as `run` downloads and extracts it; the binary is read through (its CRC checked) and dropped
        with open(os.devnull, "wb") as dropped:
            fetch_binary(client, release, CHECK_TIMEOUT, lambda message: None, dropped)
    except Transient as exc:
        return CheckResult("release", "FAIL", f"downloading v{release.version}: {exc}", InstallerFailed.exit_code)
    except BootstrapError as exc:
        return failed("release", InstallerFailed(str(exc)) if not isinstance(exc, InstallerFailed) else exc)
    pinned = " and the pinned hash" if release.pinned_sha256 else ""
    return CheckResult("release", "ok", f"v{release.version} {release.asset} downloads; its SHA-256 matches "
                       f"checksums.txt{pinned}")
