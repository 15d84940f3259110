"""`check`: a preflight that changes nothing (one request per check, no retries)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from nezha_bootstrap.config import Config, display_url
from nezha_bootstrap.errors import BootstrapError, DashboardRefused, DashboardUnreachable, InstallerFailed
from nezha_bootstrap.retry import Transient

CHECK_TIMEOUT = 10.0
UNLIKELY_TAG = "nezha-bootstrap-check-0f3c9e"  # lists nothing, creates nothing


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


def _failed(name: str, exc: BootstrapError | Transient) -> CheckResult:
    code = exc.exit_code if isinstance(exc, BootstrapError) else DashboardUnreachable.exit_code
    return CheckResult(name, "FAIL", str(exc), code)


def check_dashboard(config: Config, client: Any) -> list[CheckResult]:
    """Reachable, TLS valid, token accepted, v0 generation: one GET of an unlikely tag."""
    from nezha_bootstrap.dashboard import Dashboard

    shown = display_url(config.dashboard_url)
    try:
        Dashboard(client, config.dashboard_url, config.token).servers(UNLIKELY_TAG, CHECK_TIMEOUT)
    except Transient as exc:
        return [_failed("dashboard", exc), CheckResult("token", "skip", "not checked: dashboard unreachable")]
    except DashboardRefused as exc:
        tls = "TLS" in str(exc)
        first = _failed("dashboard", exc) if tls else CheckResult("dashboard", "ok", f"{shown} answers")
        second = CheckResult("token", "skip", "not checked: TLS failed") if tls else _failed("token", exc)
        return [first, second]
    scheme = "TLS verified" if config.dashboard_url.startswith("https:") else "plain http"
    return [
        CheckResult("dashboard", "ok", f"{shown} answers ({scheme})"),
        CheckResult("token", "ok", "accepted; the dashboard is v0 with the token API"),
    ]


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


def check_installer(config: Config, client: Any) -> CheckResult:
    """The install script downloads and has the pinned hash."""
    from nezha_bootstrap.dashboard import fetch
    from nezha_bootstrap.installer import SCRIPT_CAP, check_script

    try:
        answer = fetch(client, "GET", config.script_url, seconds_left=CHECK_TIMEOUT, cap=SCRIPT_CAP, ambiguous=False)
        if answer.status != 200 or answer.truncated:
            raise InstallerFailed(f"downloading {display_url(config.script_url)}: HTTP {answer.status}"
                                  + (", over the size cap" if answer.truncated else ""))
        check_script(answer.body, config.script_sha256)
    except Transient as exc:
        return CheckResult("installer", "FAIL", f"downloading {display_url(config.script_url)}: {exc}",
                           InstallerFailed.exit_code)
    except BootstrapError as exc:
        return _failed("installer", InstallerFailed(str(exc)) if not isinstance(exc, InstallerFailed) else exc)
    hashed = "hash matches" if config.script_sha256 else "no hash pinned"
    return CheckResult("installer", "ok", f"{display_url(config.script_url)} downloads, {hashed}")


def run_checks(config: Config, client: Any = None) -> list[CheckResult]:
    """All checks in order; `client` is an httpx client (built here when not given)."""
    if client is None:
        from nezha_bootstrap.dashboard import make_client

        client = make_client(config.ca_bundle)
    return [*check_dashboard(config, client), check_probe(config), check_installer(config, client)]
