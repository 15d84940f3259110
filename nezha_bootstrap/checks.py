"""`check`: a preflight that changes nothing (one request per check, no retries)."""

from __future__ import annotations

import platform
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nezha_bootstrap.agent import Release, asset_name
from nezha_bootstrap.config import AGENT_V1, Config, display_url
from nezha_bootstrap.errors import (
    BootstrapError,
    DashboardRefused,
    DashboardUnreachable,
    InstallerFailed,
    SettingsError,
)
from nezha_bootstrap.retry import Transient

if TYPE_CHECKING:
    from nezha_bootstrap.v1.flow import AgentConfig
    from nezha_bootstrap.facts import Facts
    from nezha_bootstrap.generation import Generation
    from nezha_bootstrap.paths import Paths

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
    from nezha_bootstrap.v0.api import Dashboard

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
    from nezha_bootstrap.v0.api import fetch
    from nezha_bootstrap.v0.script import SCRIPT_CAP, check_script

    try:
        answer = fetch(client, "GET", config.script_url, seconds_left=CHECK_TIMEOUT, cap=SCRIPT_CAP, ambiguous=False,
                       follow_redirects=False)  # as `run` downloads it
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


def run_checks(config: Config, client: Any = None, downloads: Any = None) -> list[CheckResult]:
    """All checks in order; `client` is the dashboard's httpx client, `downloads` the one of downloads
    (the system store and --ca-bundle, as `run` downloads); both built here when not given."""
    from nezha_bootstrap.v0.api import make_client, make_download_client

    client = client or make_client(config.ca_bundle)
    downloads = downloads or make_download_client(config.ca_bundle)
    return [*check_dashboard(config, client), check_probe(config), check_installer(config, downloads)]


# --- v1/v2 dashboards, and `--method direct` (dashboard-v1-v2.md) -------------------------------------

def check_generation(config: Config, settings: AgentConfig, client: Any) -> tuple[CheckResult, Generation | None]:
    """Which generation answers: the three credential-free probes once (or --dashboard as given)."""
    from nezha_bootstrap.generation import Generation, detect, http_sender

    if settings.generation == "v0":
        return CheckResult("generation", "skip", "v0, as --dashboard says (not probed)"), Generation.V0
    if settings.generation == "v1":
        return CheckResult("generation", "skip", "v1 or newer, as --dashboard says (not probed)"), Generation.V1
    try:
        found = detect(http_sender(client, config.dashboard_url), CHECK_TIMEOUT)
    except (Transient, BootstrapError) as exc:
        return _failed("generation", exc), None
    return CheckResult("generation", "ok", f"{found.value} (three requests without credentials)"), found


def check_secret(settings: AgentConfig, generation: Generation) -> CheckResult:
    """A v1/v2 agent enrolls with the agent secret; only that enrollment can tell a wrong one."""
    if not settings.secret:
        return CheckResult("secret", "FAIL", f"the dashboard is {generation.value}: agents enroll with an agent "
                           "secret; set NEZHA_AGENT_SECRET_FILE or NEZHA_AGENT_SECRET", SettingsError.exit_code)
    return CheckResult("secret", "ok", "given; not tried here (a wrong one counts towards the dashboard's WAF, "
                       "only the agent's enrollment shows it)")


def check_identity(settings: AgentConfig, facts: Facts, paths: Paths) -> CheckResult:
    """The uuid the agent would enroll with: --uuid, the state's for this machine-id, or derived from it."""
    from nezha_bootstrap.v1.flow import machine_identity
    from nezha_bootstrap.state import load

    try:
        ident = machine_identity(settings, facts, load(paths, move_aside=False))
    except BootstrapError as exc:
        return CheckResult("identity", "FAIL", str(exc).replace("invalid settings:\n  - ", ""), exc.exit_code)
    return CheckResult("identity", "ok", f"uuid {ident.uuid} (from {ident.source})")


def check_release(release: Release, client: Any) -> CheckResult:
    """checksums.txt and the agent zip download, the zip's SHA-256 matches, it holds nezha-agent."""
    from nezha_bootstrap import agent
    from nezha_bootstrap.v0.api import fetch

    try:
        texts = []
        for url, cap in ((release.checksums_url, agent.CHECKSUMS_CAP), (release.asset_url, agent.ZIP_CAP)):
            answer = fetch(client, "GET", url, seconds_left=CHECK_TIMEOUT, cap=cap, ambiguous=False)
            if answer.status != 200 or answer.truncated:
                raise InstallerFailed(f"downloading {display_url(url)}: HTTP {answer.status}"
                                      + (", over the size cap" if answer.truncated else ""))
            texts.append(answer.body)
        agent.check_zip(texts[1], release, agent.parse_checksums(texts[0].decode("utf-8", "replace"), release.asset))
        agent.extract_binary(texts[1])
    except Transient as exc:
        return CheckResult("release", "FAIL", f"downloading v{release.version}: {exc}", InstallerFailed.exit_code)
    except BootstrapError as exc:
        return _failed("release", InstallerFailed(str(exc)) if not isinstance(exc, InstallerFailed) else exc)
    pinned = " and the pinned hash" if release.pinned_sha256 else ""
    return CheckResult("release", "ok", f"v{release.version} {release.asset} downloads; its SHA-256 matches "
                       f"checksums.txt{pinned}")


def run_agent_checks(config: Config, settings: AgentConfig, facts: Facts, paths: Paths,
                     client: Any = None, downloads: Any = None) -> list[CheckResult]:
    """`check` with v1/v2 settings: generation, then the v0 checks or secret, identity, gRPC port, release."""
    from nezha_bootstrap.v0.api import make_client, make_download_client
    from nezha_bootstrap.v1.flow import v0_release, v1_config

    client = client or make_client(config.ca_bundle)
    downloads = downloads or make_download_client(config.ca_bundle)
    first, generation = check_generation(config, settings, client)
    if generation is None:
        return [first]
    if generation.is_v0:
        release = v0_release(settings)
        install = check_release(release, downloads) if release else check_installer(config, downloads)
        return [first, *check_dashboard(config, client), check_probe(config), install]
    try:
        config = v1_config(config, settings)
    except SettingsError as exc:
        return [first, CheckResult("settings", "FAIL", "; ".join(exc.problems), exc.exit_code)]
    version = settings.version or AGENT_V1
    release = Release(settings.base_url, version, asset_name(platform.machine()), settings.sha256)
    return [first, check_secret(settings, generation), check_identity(settings, facts, paths),
            check_probe(config), check_release(release, downloads)]
